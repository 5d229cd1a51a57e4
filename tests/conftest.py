"""The tests run tiny models, for which one thread is faster than several (thread hand-offs
dominate), and a second thread on a shared 2-core machine mostly waits. Subprocesses inherit it."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the variable, which torch reads at import)

import synth  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny synthetic Vaihingen set: 3 tiles of 64 px."""
    root = tmp_path_factory.mktemp("synthetic")
    synth.synthesize(root, dataset="vaihingen", tiles=3, size=64, seed=1)
    return root
