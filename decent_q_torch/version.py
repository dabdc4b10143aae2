"""The version of decent_q's PyTorch flow: decent_q's own."""

import os

with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "decent_q", "version.py")) as _f:
    __version__ = _f.read().split('"')[1]
