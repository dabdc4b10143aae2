"""decent_q: power-of-two quantization of TensorFlow graphs (Vitis AI vai_q_tensorflow API).

The FixNeuron kernel (ops/) is compiled on first import against the TensorFlow that is running,
into a cache keyed by the TensorFlow version (see decent_q/_build.py), so the installed wheel is
pure Python and never mismatches the TensorFlow binary.
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPy(build_py):
    """Ships the kernel source inside the package and the contrib import hook (.pth)."""

    def run(self):
        super().run()
        src_dir = os.path.join(self.build_lib, "decent_q", "ops_src")
        os.makedirs(src_dir, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "ops"))):
            if name.endswith((".cc", ".h")):
                shutil.copy(os.path.join(HERE, "ops", name), src_dir)
        with open(os.path.join(self.build_lib, "decent-q-contrib.pth"), "w") as f:
            f.write("import _decent_q_contrib; _decent_q_contrib.install()\n")


# vai_q_tensorflow export and output_format="onnx" (decent_q/onnx_export.py); tested with onnx
# 1.23.2 and onnxruntime 1.32.0. tf2onnx is pinned: decent_q extends it through its rewriter and
# graph API.
ONNX = ["tf2onnx==1.17.0", "onnx>=1.14", "onnxruntime>=1.17"]


# The PyTorch flow (decent_q_torch, docs/pytorch.md); pinned: torch 2.14.1 and torchvision 0.29.1
# are the pair tested together.
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def _version():
    with open(os.path.join(HERE, "decent_q", "version.py")) as f:
        return f.read().split('"')[1]


setup(
    name="decent_q",
    version=_version(),
    description="Power-of-two (DPU) quantization of TensorFlow graphs: QAT and post-training",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["decent_q", "decent_q.*", "decent_q_torch", "decent_q_torch.*"]),
    py_modules=["_decent_q_contrib", "_decent_q_entry", "_decent_q_native"],
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tf-keras>=2.16,<2.22",
        "tf-slim>=1.1",
        "numpy",
    ],
    # matplotlib draws analyze_report.png (vai_q_tensorflow analyze); without it the report
    # has its Markdown and JSON files only.
    extras_require={"test": ["pytest", "mlxtend", "hypothesis", "matplotlib"] + ONNX + TORCH,
                    "onnx": ONNX, "torch": TORCH,
                    "examples": ["mlxtend"], "analyze": ["matplotlib"]},
    entry_points={"console_scripts": [
        "vai_q_tensorflow=_decent_q_entry:vai_q_tensorflow",
        "decent_q=_decent_q_entry:vai_q_tensorflow",
        "freeze_graph=_decent_q_entry:freeze_graph",
    ]},
    cmdclass={"build_py": BuildPy},
)
