"""The whole QAT example in one command: float training, QAT fine-tuning, evaluation + deploy.

    python examples/run_qat_example.py [--work_dir qat_example]

Each step runs as its own process, as a user's scripts would (train.py and eval.py share
nothing but the checkpoint folder). TensorFlow's C++ start-up notes, which it prints before its
log settings apply (oneDNN, CUDA probing, CPU features), are dropped from the steps' stderr;
everything else they print is shown.
"""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# TensorFlow's start-up notes: glog lines from these C++ files, absl's preamble, and the
# continuation line of cpu_feature_guard's note.
_NOISE = re.compile(
    r"^([IWE]\d{4} [\d:. ]+\s*\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|"
    r"cuda_executor|cuda_dnn|cuda_fft|cuda_blas|gpu_device|dso_loader)\.cc:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow)")


def is_startup_noise(line):
    """Whether a stderr line is one of TensorFlow's start-up notes."""
    return bool(_NOISE.match(line))


def run(script, *args):
    """Runs examples/<script> (or a path) in a new process; raises if it fails."""
    start = time.time()
    print(f"$ python {script} {' '.join(args)}", flush=True)
    with subprocess.Popen([sys.executable, os.path.join(HERE, script), *args],
                          stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        for line in proc.stderr:
            if not is_startup_noise(line):
                sys.stderr.write(line)
                sys.stderr.flush()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, script)
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
