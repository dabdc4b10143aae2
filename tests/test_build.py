"""_build.py: the kernel library is built once per TensorFlow / source / compiler, then reused."""

import os

import pytest

from decent_q import _build
from decent_q.errors import QuantizeError


def test_library_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DECENT_Q_CACHE_DIR", str(tmp_path))
    first = _build.library_path()
    assert os.path.dirname(first) == str(tmp_path)
    mtime = os.stat(first).st_mtime_ns
    assert _build.library_path() == first
    assert os.stat(first).st_mtime_ns == mtime  # not rebuilt
    assert [p for p in os.listdir(tmp_path) if p.endswith(".so")] == [os.path.basename(first)]


def test_missing_compiler_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("DECENT_Q_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(QuantizeError, match="C\\+\\+ compiler"):
        _build.library_path()


def test_unwritable_cache_is_explained(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("DECENT_Q_CACHE_DIR", str(blocker / "sub"))
    with pytest.raises(QuantizeError, match="DECENT_Q_CACHE_DIR"):
        _build.library_path()
