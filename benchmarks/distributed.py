"""Distributed QAT step times: examples/distributed_qat.py with 1 and 2 workers.

    python benchmarks/distributed.py [--steps 300] [--work_dir DIR]

Trains the example's float model (250 steps, as tests/test_distributed.py) once, then runs
examples/train.py (one process, no cluster: the accuracy reference) and the QAT example on
TensorFlow's distributed runtime (one parameter server, local processes on 127.0.0.1) as:
1 worker, 2 asynchronous workers, 2 synchronous workers (SyncReplicasOptimizer), each for
--steps global steps from the same float checkpoint, one after the other in this invocation.
Reports each worker's training-loop time per step (its session set-up excluded), the global
steps a second of the run, and the deployed accuracy (examples/eval.py on the chief's last
checkpoint). Measured, not asserted: on a 2-core machine the three processes share two cores,
so two workers cannot each step as fast as one alone here.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")

RUNS = (("1 worker", ["--workers", "1"]),
        ("2 workers, asynchronous", ["--workers", "2"]),
        ("2 workers, synchronous", ["--workers", "2", "--sync"]))


def _run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
                            env=env, capture_output=True, text=True, cwd=EXAMPLES, check=False)
    if result.returncode:
        sys.exit(f"{script} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def _accuracy(float_dir, train_dir, output_dir):
    """The deployed model's accuracy (examples/eval.py on the last checkpoint), as text."""
    out = _run("eval.py", "--float_dir", float_dir, "--train_dir", train_dir,
               "--output_dir", output_dir)
    return re.search(r"QAT accuracy \(quantize_eval_model\): (\S+)", out).group(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="global steps of each run")
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="dq_distributed_")
    float_dir = os.path.join(work, "float")
    if not os.path.exists(float_dir):
        _run("train_float.py", "--float_dir", float_dir, "--steps", 250)
    print(f"{args.steps} global steps each, batch 64 a worker step\n")
    print("| run | ms a step, each worker | worker steps | global steps / s | "
          "deployed accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    single = os.path.join(work, "single")
    _run("train.py", "--float_dir", float_dir, "--train_dir", single, "--output_dir",
         single + "_q", "--steps", args.steps)
    print(f"| one process (examples/train.py) | | {args.steps} | | "
          f"{_accuracy(float_dir, single, single + '_q')} |", flush=True)
    for name, options in RUNS:
        slug = re.sub(r"\W+", "_", name)
        train_dir, output_dir = os.path.join(work, slug), os.path.join(work, slug + "_q")
        out = _run("distributed_qat.py", "--float_dir", float_dir, "--train_dir", train_dir,
                   "--output_dir", output_dir, "--steps", args.steps, "--log_every", 0,
                   *options)
        found = re.findall(r"worker \d+: (\d+) steps, .* global step (\d+), ([\d.]+) s "
                           r"\(([\d.]+) ms a step\)", out)
        if not found:
            sys.exit(f"{name}: no worker summary in\n{out}")
        ms = " / ".join(f[3] for f in found)
        steps = " / ".join(f[0] for f in found)
        rate = args.steps / max(float(f[2]) for f in found)
        print(f"| {name} | {ms} | {steps} | {rate:.1f} | "
              f"{_accuracy(float_dir, train_dir, output_dir)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
