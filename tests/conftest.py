"""Collection settings for the whole suite.

tests/pytorch/ holds the PyTorch flow's tests. Importing torchvision into a process that has
imported TensorFlow 2.21 crashes the interpreter (a fatal error inside torchvision's op
registration, seen with torch 2.14.1 / torchvision 0.29.1), and the rest of the suite imports
TensorFlow at collection, so those tests run in a process of their own:
tests/test_pytorch_flow.py starts it with DECENT_Q_TORCH_TESTS=1, which lets them be collected.
Users never meet the combination: decent_q_torch does not import TensorFlow.
"""

import os

collect_ignore = [] if os.environ.get("DECENT_Q_TORCH_TESTS") == "1" else ["pytorch"]
