"""QAT on TensorFlow's distributed runtime (examples/distributed_qat.py): one parameter server
and two workers as local processes on 127.0.0.1, between-graph replication.

The outcome a user needs: the run trains, every worker's positions land in one histogram per
point on the parameter server, the chief's checkpoint deploys the most frequent position of
those summed histograms, the deployed model is as accurate as a single-process QAT run of the
same total steps, and a worker that dies can be started again and rejoins. Every process has a
timeout, and every test stops what it started.
"""

import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from decent_q import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

pytest.importorskip("mlxtend")
import distributed_qat  # noqa: E402  pylint: disable=wrong-import-position

FLOAT_STEPS = 250   # a float model short of its best (96.1 %), so that QAT visibly trains
QAT_STEPS = 400     # global steps, the single-process run's steps
TIMEOUT = 600       # seconds, for every process


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT,
                            cwd=EXAMPLES)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def accuracy(out):
    return float(re.search(r"QAT accuracy \(quantize_eval_model\): (\S+)", out).group(1))


def deploy(float_dir, train_dir, output_dir):
    """examples/eval.py on the latest checkpoint of train_dir: (its output, the positions of
    the written quantize_eval_model's FixNeurons)."""
    out = run("eval.py", "--float_dir", float_dir, "--train_dir", train_dir,
              "--output_dir", output_dir)
    model_path, = glob.glob(os.path.join(output_dir, "quantize_eval_model_*.pb"))
    graph_def = tf.compat.v1.GraphDef()
    with open(model_path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return out, {n.name: n.attr["quantize_pos"].i for n in graph_def.node if n.op == "FixNeuron"}


def histograms(train_dir):
    checkpoint = tf.train.latest_checkpoint(train_dir)
    return {name[:-len("/pos_hist")]: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint) if name.endswith("/pos_hist")}


def global_step(train_dir):
    return int(tf.train.load_variable(tf.train.latest_checkpoint(train_dir), "global_step"))


def worker_summaries(train_dir, workers=2):
    """{task: (local steps, global step)} from each worker's last summary line."""
    found = {}
    for i in range(workers):
        with open(os.path.join(train_dir, "logs", f"worker_{i}.log")) as log:
            lines = re.findall(r"worker \d+: (\d+) steps, last loss \S+, global step (\d+)",
                               log.read())
        found[i] = tuple(map(int, lines[-1]))
    return found


def mean_losses(train_dir, task):
    """The mean losses of each --log_every steps a worker logged, in order."""
    with open(os.path.join(train_dir, "logs", f"worker_{task}.log")) as log:
        return [float(v) for v in re.findall(r"global step \d+, mean loss (\S+)", log.read())]


def assert_deployed_positions_are_the_histograms_modes(positions, train_dir):
    hists = histograms(train_dir)
    compared = 0
    for point, hist in hists.items():
        if point in positions and np.max(hist) > 0:
            # Independent of decent_q.ops: the most frequent position, ties to the smaller.
            assert positions[point] == int(np.argmax(hist)) + ops.MIN_POS, point
            compared += 1
    assert compared >= 10, (sorted(positions)[:5], sorted(hists)[:5])


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float")
    run("train_float.py", "--float_dir", folder, "--steps", FLOAT_STEPS)
    return folder


@pytest.fixture(scope="module")
def single_process(float_dir, tmp_path_factory):
    """examples/train.py for QAT_STEPS steps and its deployed accuracy."""
    work = tmp_path_factory.mktemp("single")
    run("train.py", "--float_dir", float_dir, "--train_dir", work / "train",
        "--output_dir", work / "q", "--steps", QAT_STEPS)
    out, _ = deploy(float_dir, work / "train", work / "q")
    return float(re.search(r"float accuracy: (\S+)", out).group(1)), accuracy(out)


def test_cluster_addresses_are_local_and_distinct():
    cluster = distributed_qat.local_cluster(2)
    addresses = cluster["ps"] + cluster["worker"]
    assert len(cluster["ps"]) == 1 and len(cluster["worker"]) == 2
    assert all(a.startswith("127.0.0.1:") for a in addresses)
    assert len(set(addresses)) == 3


def test_two_async_workers_train_as_one_process_does(float_dir, single_process, tmp_path):
    float_acc, single_acc = single_process
    train_dir = tmp_path / "train"
    out = run("distributed_qat.py", "--float_dir", float_dir, "--train_dir", train_dir,
              "--output_dir", tmp_path / "q", "--steps", QAT_STEPS, "--workers", 2,
              "--log_every", 25, "--timeout", TIMEOUT)
    assert json.loads(re.search(r"cluster: (.*)", out).group(1))["ps"][0].startswith("127.0.0.1")
    summaries = worker_summaries(train_dir)
    steps = global_step(train_dir)
    # Both workers trained, and the global step counts the steps of both.
    assert all(local > 0.2 * QAT_STEPS for local, _ in summaries.values()), summaries
    assert QAT_STEPS <= steps <= QAT_STEPS + 2
    assert abs(sum(local for local, _ in summaries.values()) - steps) <= 2, (summaries, steps)
    # One histogram per point on the parameter server, counting every worker's steps.
    counts = {point: int(np.sum(h)) for point, h in histograms(train_dir).items()}
    assert counts and all(abs(c - steps) <= 2 for c in counts.values()), counts
    # It trains: the loss falls, and the deployed model matches the single-process run.
    losses = mean_losses(train_dir, 0)
    assert np.mean(losses[-3:]) < np.mean(losses[:2]), losses
    out, positions = deploy(float_dir, train_dir, tmp_path / "q")
    assert_deployed_positions_are_the_histograms_modes(positions, train_dir)
    assert accuracy(out) >= float_acc + 0.005, (accuracy(out), float_acc)
    assert abs(accuracy(out) - single_acc) <= 0.005, (accuracy(out), single_acc)


def test_two_sync_workers_aggregate_every_step(float_dir, tmp_path):
    train_dir = tmp_path / "train"
    steps = 40
    run("distributed_qat.py", "--float_dir", float_dir, "--train_dir", train_dir,
        "--output_dir", tmp_path / "q", "--steps", steps, "--workers", 2, "--sync",
        "--log_every", 10, "--timeout", TIMEOUT)
    summaries = worker_summaries(train_dir)
    assert global_step(train_dir) == steps
    # Each global step applies two gradients, of whichever workers took its tokens first (a
    # worker's gradient that arrives after its step was applied is dropped): both workers
    # contributed, about as often as each other.
    local_steps = [local for local, _ in summaries.values()]
    assert 2 * steps - 2 <= sum(local_steps) <= 2 * steps + 6, summaries
    assert all(local >= 0.5 * steps for local in local_steps), summaries
    # Every worker's positions were counted, in one histogram per point.
    counts = {point: int(np.sum(h)) for point, h in histograms(train_dir).items()}
    assert counts and all(abs(c - sum(local_steps)) <= 2 for c in counts.values()), counts
    _, positions = deploy(float_dir, train_dir, tmp_path / "q")
    assert_deployed_positions_are_the_histograms_modes(positions, train_dir)


def _wait_for(path, pattern, timeout, procs):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if re.search(pattern, f.read()):
                    return
        assert all(p.poll() is None for p in procs), f"a task exited early; see {path}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout} s")


def test_killed_worker_restarts_and_rejoins(float_dir, tmp_path):
    # Synchronous: while worker 1 is down, the chief waits for its gradients instead of
    # finishing alone, whatever the speed of the machine.
    steps = 60
    options = distributed_qat.parse_args([
        "--float_dir", str(float_dir), "--train_dir", str(tmp_path / "train"),
        "--output_dir", str(tmp_path / "q"), "--steps", str(steps), "--sync",
        "--log_every", "10", "--timeout", str(TIMEOUT)])
    cluster = distributed_qat.local_cluster(2)
    log_1 = os.path.join(options.train_dir, "logs", "worker_1.log")
    procs = [distributed_qat.start_task(options, cluster, "ps", 0),
             distributed_qat.start_task(options, cluster, "worker", 0),
             distributed_qat.start_task(options, cluster, "worker", 1)]
    try:
        _wait_for(log_1, r"local step 20,", TIMEOUT, procs)
        procs[2].kill()
        procs[2].wait()
        procs[2] = distributed_qat.start_task(options, cluster, "worker", 1)
        for proc in procs[1:]:
            assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        distributed_qat.stop(procs)
    with open(log_1) as log:
        joined_at = [int(v) for v in re.findall(r"joined at global step (\d+)", log.read())]
    assert len(joined_at) == 2 and 0 < joined_at[1] < steps, joined_at
    # The restarted worker trained to the end with the chief (the two share each step's
    # gradients unevenly, as in the synchronous test), and the checkpoint deploys.
    assert worker_summaries(options.train_dir)[1][0] >= 0.5 * (steps - joined_at[1])
    assert global_step(options.train_dir) == steps
    _, positions = deploy(float_dir, options.train_dir, tmp_path / "q")
    assert_deployed_positions_are_the_histograms_modes(positions, options.train_dir)


def test_tasks_end_with_their_launcher(float_dir, tmp_path):
    train_dir = tmp_path / "train"
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, "distributed_qat.py"), "--float_dir",
         str(float_dir), "--train_dir", str(train_dir), "--output_dir", str(tmp_path / "q"),
         "--steps", "1000000", "--timeout", str(TIMEOUT)],
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"), cwd=EXAMPLES,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = [os.path.join(train_dir, "logs", f) for f in ("ps_0.log", "worker_0.log",
                                                           "worker_1.log")]
    try:
        _wait_for(logs[2], r"joined at", TIMEOUT, [launcher])
        launcher.kill()
        launcher.wait()
        for log in logs:  # each task notices within a second that its launcher is gone
            _wait_for(log, r"its launcher \(pid \d+\) ended, exiting", 30, [])
    finally:
        distributed_qat.stop([launcher])


def test_missing_float_checkpoint_is_one_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "distributed_qat.py"), "--float_dir",
         str(tmp_path / "nowhere"), "--train_dir", str(tmp_path / "train")],
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"), cwd=EXAMPLES,
        capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "no float checkpoint in" in result.stderr and "train_float.py" in result.stderr
    assert not os.path.exists(tmp_path / "train")  # nothing started, nothing written
