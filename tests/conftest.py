"""The tests run tiny models, for which one thread is faster than several (thread hand-offs
dominate), and a second thread on a shared 2-core machine mostly waits. Subprocesses inherit it."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the variable, which torch reads at import)

torch.set_num_threads(1)
