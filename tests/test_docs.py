"""docs/ is the behaviour contract: every citation of it resolves, and nothing in the repository
refers to documents outside the repository.

A citation is a docs page, optionally followed by a heading of it in double quotes, e.g.
``docs/placement.md "Layer forms"`` (see docs/README.md "Citing these pages"). Files are the
repository's .py, .md, .cc, .h and .txt files (git's tracked and not-ignored ones when git is
available), without .venv.
"""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
_EXTENSIONS = (".py", ".md", ".cc", ".h", ".txt")
_SKIP_DIRS = frozenset({".venv", ".git", "build", "dist", "__pycache__", ".pytest_cache"})

# Written in pieces so that this file does not match itself.
_OUTSIDE = re.compile(r"\b" + "SP" + r"EC\b"                   # the old contract, by any name
                      + r"|(?:\.\./)+" + "sha" + r"red\b"        # relative paths into it
                      + r"|/work/" + "sha" + r"red\b")           # its absolute path
# docs/<page>.md (in Markdown perhaps in backticks), then optionally whitespace (a line break
# included) and "Heading".
_CITATION = re.compile(r'(?<![\w/.-])docs/([\w.-]+\.md)`?(?:\s+"([^"]{1,120})")?')
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _walk():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in files:
            yield os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")


def repository_files():
    """Relative paths of the files checked here, sorted."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
        names = [n for n in out.stdout.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = list(_walk())
    return sorted(n for n in set(names)
                  if n.endswith(_EXTENSIONS) and n.split("/")[0] not in _SKIP_DIRS and
                  os.path.isfile(os.path.join(ROOT, n)))


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
        return f.read()


def headings(page):
    """The headings of docs/<page> (text without the # marks), code blocks excluded."""
    found, fenced = [], False
    for line in _read(f"docs/{page}").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            found.append(match.group(2))
    return found


def citations():
    """(file, line, page, heading or None) of every docs citation in the repository."""
    found = []
    for path in repository_files():
        text = _read(path)
        for match in _CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            heading = match.group(2)
            if heading is not None:
                heading = " ".join(heading.split())  # a citation may wrap in prose
            found.append((path, line, match.group(1), heading))
    return found


def test_the_files_are_found():
    files = repository_files()
    assert "decent_q/plan.py" in files and "docs/README.md" in files
    assert "ops/fix_neuron_ops.cc" in files
    assert not [f for f in files if f.startswith(".venv/")]


def test_nothing_cites_documents_outside_the_repository():
    offenders = []
    for path in repository_files():
        for number, line in enumerate(_read(path).splitlines(), start=1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, ("cite docs/<page>.md \"Heading\" instead:\n" + "\n".join(offenders))


def test_every_docs_citation_names_a_page_and_heading_that_exist():
    found = citations()
    bad = []
    for path, line, page, heading in found:
        if not os.path.isfile(os.path.join(DOCS, page)):
            bad.append(f"{path}:{line}: docs/{page} does not exist")
        elif heading is not None and heading not in headings(page):
            bad.append(f"{path}:{line}: docs/{page} has no heading {heading!r}; it has: "
                       + "; ".join(headings(page)))
    assert not bad, "\n".join(bad)
    cited_from_code = {path for path, _, _, heading in found
                       if heading is not None and path.startswith("decent_q/")}
    assert "decent_q/plan.py" in cited_from_code


@pytest.mark.parametrize("page", sorted(p for p in os.listdir(DOCS) if p.endswith(".md")))
def test_docs_headings_are_unique_so_citations_are_unambiguous(page):
    names = headings(page)
    assert names, f"docs/{page} has no headings"
    assert len(names) == len(set(names)), \
        f"docs/{page} repeats {sorted({h for h in names if names.count(h) > 1})}"


def test_the_docs_index_lists_every_page():
    index = _read("docs/README.md")
    pages = sorted(p for p in os.listdir(DOCS) if p.endswith(".md") and p != "README.md")
    assert [p for p in pages if f"docs/{p}" not in index] == []


def test_citation_pattern():
    text = 'see docs/placement.md "Layer forms" and docs/files.md, not mydocs/x.md "A"'
    assert [(m.group(1), m.group(2)) for m in _CITATION.finditer(text)] == \
        [("placement.md", "Layer forms"), ("files.md", None)]
    assert _OUTSIDE.search("as " + "SP" + "EC.md says") and \
        _OUTSIDE.search("../../" + "shared/x") and not _OUTSIDE.search("SPECIAL_AVGPOOL")
