"""``python -m decent_q``: the ``vai_q_tensorflow`` command."""

import sys

import _decent_q_entry

if __name__ == "__main__":
    sys.exit(_decent_q_entry.vai_q_tensorflow())
