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


# The torch.cuda functions the suite stubs (a CPU machine pretending to have a GPU). Taken once,
# at import: a stub left behind by one test must fail that test, not every later one that asks CUDA.
STUBBED_CUDA = ("is_available", "get_device_capability", "is_bf16_supported", "get_rng_state",
                "set_rng_state", "set_rng_state_all", "current_device", "device_count", "set_device")
REAL_CUDA = {name: getattr(torch.cuda, name) for name in STUBBED_CUDA}


@pytest.fixture(autouse=True)
def no_cuda_stub_left_behind():
    yield
    left = [name for name, real in REAL_CUDA.items() if getattr(torch.cuda, name) is not real]
    for name in left:
        setattr(torch.cuda, name, REAL_CUDA[name])
    assert not left, f"this test left torch.cuda.{', torch.cuda.'.join(left)} stubbed (restored now)"
