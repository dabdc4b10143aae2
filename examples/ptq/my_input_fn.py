"""Input functions for the digits example (guide 4.2.2.2, "input_fn").

``--input_fn my_input_fn.calib_input``: run vai_q_tensorflow from this folder (the current
folder is put on sys.path). Each function takes the step number and returns
{placeholder name: numpy array}; the preprocessing (scaling to [0, 1]) happens here, not in
the graph.
"""

import numpy as np

CALIB_BATCH = 32


def load_split():
    """(train_x, train_y, test_x, test_y): scikit-learn's 8x8 digits, NHWC in [0, 1], a fixed
    70/30 split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.7 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


_CACHE = {}


def _split():
    if not _CACHE:
        _CACHE["data"] = load_split()
    return _CACHE["data"]


def calib_input(iter):  # pylint: disable=redefined-builtin
    """Calibration batch `iter`: CALIB_BATCH training images."""
    train_x = _split()[0]
    start = (iter * CALIB_BATCH) % (len(train_x) - CALIB_BATCH)
    return {"input": train_x[start:start + CALIB_BATCH]}


def dump_input(iter):  # pylint: disable=redefined-builtin
    """Dump batch `iter`: one test image (batch size 1, like the DPU)."""
    test_x = _split()[2]
    return {"input": test_x[iter:iter + 1]}
