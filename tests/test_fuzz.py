"""Fuzzing (bounded): random and mutated inputs never fail with anything but decent_q's errors.

Counts: each property runs `max_examples` cases (printed with `pytest -s` via the statistics
hook of hypothesis: `--hypothesis-show-statistics`).
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _graph_bytes():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.ones([3, 3, 3, 4], np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="conv"), name="relu")
        tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool")
    return graph.as_graph_def().SerializeToString()


GRAPH = _graph_bytes()


@FUZZ
@given(st.binary(max_size=2048))
def test_loader_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "g.pb"
    path.write_bytes(data)
    try:
        utils.load_graph_def(str(path))
    except QuantizeError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GRAPH) - 1), st.integers(0, 255)), max_size=8),
       st.integers(1, len(GRAPH)))
def test_loader_and_planner_on_mutated_graphs(tmp_path_factory, flips, cut):
    data = bytearray(GRAPH[:cut])
    for index, value in flips:
        if index < len(data):
            data[index] = value
    path = tmp_path_factory.mktemp("fz") / "g.pb"
    path.write_bytes(bytes(data))
    try:
        graph_def = utils.load_graph_def(str(path))
        cfg = QuantizeConfig(input_nodes=["input"], output_nodes=["pool"],
                             input_shapes=[[-1, 8, 8, 3]])
        plan_lib.plan_quantization(graph_def, cfg)
    except QuantizeError:
        pass


_VALUES = st.one_of(st.none(), st.integers(-5, 40), st.text(max_size=12), st.floats(),
                    st.lists(st.integers(-3, 300), max_size=5),
                    st.lists(st.text(max_size=6), max_size=3), st.booleans(),
                    st.dictionaries(st.text(max_size=5), st.integers(-2, 20), max_size=3))
_FIELDS = ["input_nodes", "output_nodes", "input_shapes", "ignore_nodes", "weight_bit",
           "activation_bit", "nodes_bit", "method", "nodes_method", "calib_iter",
           "align_concat", "simulate_dpu", "adjust_shift_bias", "adjust_shift_cut",
           "arch_type", "do_cle", "gpu_memory_fraction", "fold_bn_freeze_step",
           "max_dump_batches"]


@FUZZ
@given(st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4))
def test_config_only_raises_config_error(kwargs):
    try:
        QuantizeConfig(**kwargs)
    except ConfigError:
        pass


@pytest.mark.parametrize("text", ["?,224,224,3", "1,2,3,4:?,5,5,1", ",,,", "::", "?,?,?,?",
                                  "a,b", "1,2,3,4,5"])
def test_input_shapes_strings(text):
    try:
        QuantizeConfig(input_shapes=text)
    except ConfigError:
        pass


# -- the command line -------------------------------------------------------------------------

_FLAGS = ["--" + f.name for f in __import__("decent_q.config", fromlist=["OPTIONS"]).OPTIONS
          if f.metadata["cli"]] + ["--input_frozen_graph", "--input_fn", "--quiet", "--debug",
                                   "--help", "--version", "-h", "--nope", "-", "--"]
_VALUES = ["frozen.pb", "missing.pb", "garbage.pb", ".", "input", "logits", "prob",
           "?,8,8,3", "-1,8,8,3", "8,8", "?,8,8,3:?,8,8,3", "conv1/Conv2D:4", "x:y", "0", "1",
           "2", "-1", "17", "0.5", "nan", "1e309", "DEFAULT", "my_input_fn.calib_input",
           "my_input_fn.nope", "os.getcwd", "sys.exit", "nomod.f", "a.b.c", "", " ", "=",
           "quantize", "inspect", "dump", "out", "a_file", "a_file/x", "-", "\u00e9\u00df",
           "' OR 1", "%s%n", "~"]
_BASE = ["quantize", "--input_frozen_graph", "frozen.pb", "--input_nodes", "input",
         "--output_nodes", "logits", "--input_shapes", "?,8,8,3", "--input_fn",
         "my_input_fn.calib_input", "--calib_iter", "1", "--output_dir", "out", "--quiet"]
# Runs that get as far as calibrating take ~0.3 s: a small budget keeps each test < 15 s.
CLI_FUZZ = settings(max_examples=500, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
CLI_CASES = []  # (property, exit status) of each case: reported by test_cli_fuzz_counts


@pytest.fixture
def cli_folder(tmp_path_factory, monkeypatch):
    """The current folder: a small frozen graph, a garbage file, a file, an input_fn module."""
    import sys  # pylint: disable=import-outside-toplevel
    import helpers  # pylint: disable=import-outside-toplevel
    folder = tmp_path_factory.mktemp("cli_fuzz")
    utils.save_graph_def(helpers.small_cnn(), str(folder / "frozen.pb"))
    (folder / "garbage.pb").write_bytes(b"\x08\x96\x01garbage")
    (folder / "a_file").write_text("x")
    helpers.write_input_fn_module(folder, "my_input_fn")
    monkeypatch.chdir(folder)
    sys.modules.pop("my_input_fn", None)
    yield folder
    sys.modules.pop("my_input_fn", None)


def _check_cli(argv, capsys):
    from decent_q import cli  # pylint: disable=import-outside-toplevel
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # pragma: no cover - must not happen
        raise AssertionError(f"cli.main({argv!r}) raised SystemExit({stop.code})") from None
    out, err = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, err[-500:])
    assert "internal error" not in err, (argv, err[-1500:])
    assert "Traceback" not in err or "--debug" in argv, (argv, err[-1500:])
    if code == 2:
        assert "[decent_q] ERROR: " in err or ": error: " in err, (argv, err[-500:])
    elif code == 1:
        assert err.count("[decent_q] ERROR: ") == 1, (argv, err[-500:])
    return code


_TOKEN = st.one_of(st.sampled_from(_FLAGS), st.sampled_from(_VALUES),
                   st.text(st.characters(blacklist_categories=("Cs",),
                                         blacklist_characters="\x00"), max_size=8))


@CLI_FUZZ
@given(st.sampled_from(["quantize", "inspect", "dump", "frobnicate", "--quiet"]),
       st.lists(_TOKEN, max_size=10))
def test_cli_random_argv(cli_folder, capsys, command, tokens):
    CLI_CASES.append(("random", _check_cli([command] + tokens, capsys)))


@CLI_FUZZ
@given(st.lists(st.tuples(st.sampled_from(["drop", "replace", "insert", "swap"]),
                          st.integers(0, len(_BASE) - 1), _TOKEN), min_size=1, max_size=4))
def test_cli_mutated_argv(cli_folder, capsys, edits):
    argv = list(_BASE)
    for kind, index, token in edits:
        index = min(index, len(argv) - 1) if argv else 0
        if kind == "drop" and argv:
            del argv[index]
        elif kind == "replace" and argv:
            argv[index] = token
        elif kind == "insert":
            argv.insert(index, token)
        elif kind == "swap" and len(argv) > 1:
            argv[index], argv[index - 1] = argv[index - 1], argv[index]
    CLI_CASES.append(("mutated", _check_cli(argv, capsys)))


_OPTION_FLAGS = [f for f in _FLAGS if f not in ("--quiet", "--debug", "--help", "--version",
                                                 "-h", "--nope", "-", "--")]


@CLI_FUZZ
@given(st.lists(st.tuples(st.sampled_from(_OPTION_FLAGS), _TOKEN), min_size=1, max_size=3))
def test_cli_option_values(cli_folder, capsys, options):
    """The valid quantize command with 1-3 options set to random values (the last wins)."""
    argv = list(_BASE) + [f"{flag}={value}" for flag, value in options]
    CLI_CASES.append(("values", _check_cli(argv, capsys)))


def test_cli_fuzz_counts(capsys):
    """Runs after the two CLI properties (file order): prints how many cases they ran."""
    import collections  # pylint: disable=import-outside-toplevel
    counts = collections.Counter(CLI_CASES)
    with capsys.disabled():
        for prop in ("random", "mutated", "values"):
            codes = {c: n for (p, c), n in sorted(counts.items()) if p == prop}
            print(f"\n[fuzz] cli {prop} argv: {sum(codes.values())} cases, exit status "
                  f"counts {codes}", end="")
        print()
