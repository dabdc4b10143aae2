"""The whole QAT example in one command: float training, QAT fine-tuning, evaluation + deploy.

    python examples/run_qat_example.py [--work_dir qat_example]

Each step runs as its own process, as a user's scripts would (train.py and eval.py share
nothing but the checkpoint folder).
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script, *args):
    start = time.time()
    print(f"$ python {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, script), *args], check=True)
    print(f"({script}: {time.time() - start:.0f} s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="qat_example")
    parser.add_argument("--float_steps", default="1200")
    parser.add_argument("--qat_steps", default="400")
    args = parser.parse_args(argv)
    dirs = {k: os.path.join(args.work_dir, k) for k in ("float", "train", "quantize_results")}
    run("train_float.py", "--float_dir", dirs["float"], "--steps", args.float_steps)
    run("train.py", "--float_dir", dirs["float"], "--train_dir", dirs["train"],
        "--output_dir", dirs["quantize_results"], "--steps", args.qat_steps)
    run("eval.py", "--float_dir", dirs["float"], "--train_dir", dirs["train"],
        "--output_dir", dirs["quantize_results"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
