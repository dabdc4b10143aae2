"""Runs tests/pytorch/ (the PyTorch flow) in its own process, without TensorFlow (see
tests/conftest.py); fails with that run's report if any of its tests fails."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pytorch_flow_suite():
    env = dict(os.environ, DECENT_Q_TORCH_TESTS="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join("tests", "pytorch")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1], report
