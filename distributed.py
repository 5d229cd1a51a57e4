"""
Several processes (torchrun): the process group, a start that stops every
process on one's user error, work shared out through claim files, and batch norm whose
statistics cover the global batch of all processes, on GPUs and on CPUs
(torch's SyncBatchNorm runs on GPUs only), per scenario where the model keeps
statistics per scenario. train.py's wrap_model puts the model under it.
"""

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn

from data import DataError, one_line
from dis2 import ScenarioBatchNorm2d
from losses import at_least_fp32


def setup_distributed(device):
    """Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set): one process per GPU
    with NCCL, or per CPU worker with Gloo. Returns (device, rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # A collective that waits longer than this is a hang; rank 0's validation, which the others wait
    # for at a barrier, takes minutes at the paper's sizes.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device, dist.get_rank(), dist.get_world_size()


def leave_distributed():
    """Waits for every process, then tears the process group down. The
    barrier's work object is held until after the teardown: if a Gloo worker
    thread dropped it last, it would need the GIL while the teardown, holding
    the GIL, joins that thread (a deadlock at exit seen with torch 2.13)."""
    barrier = dist.barrier(async_op=True)
    barrier.wait()
    dist.destroy_process_group()
    del barrier


def stop_together(check, device, rank, world):
    """check() in every process; where it stops with a user error in any of them, every process stops, before any
    has written anything, and only the first of those that stopped says why (the same error in every
    process would otherwise be printed once for each), before any exits: torchrun stops the others at the
    first exit."""
    try:
        result, error = check(), None
    except DataError as e:
        result, error = None, e
    if world > 1:
        first = torch.tensor([rank if error else world], device=device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        if first.item() < world:
            if first.item() == rank:
                print("error: " + one_line(error), file=sys.stderr, flush=True)
            leave_distributed()
            raise SystemExit(2)
    if error:
        raise error
    return result


def first_process_value(value, world):
    """The first process's `value` in every process (under torchrun; `value` without one)."""
    if world == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


# Work of very uneven sizes (the areas of a city) shared out with no collective after the start, so none can
# time out: each process claims the next item nobody has by creating its claim file (an exclusive create, on a
# local disk and on NFS v3 or later), and reports how it went in a result file, which the first process waits for.


def claim(folder, name) -> bool:
    """Whether this process got item `name`: True for the one process that creates folder/<name>.claim first."""
    try:
        with open(Path(folder) / f"{name}.claim", "x"):
            return True
    except FileExistsError:
        return False


def report(folder, name, result=""):
    """folder/<name>.result holding `result` (one line; "" for done), complete once it has its name."""
    temporary = Path(folder) / f".{name}.result.partial"
    temporary.write_text(result)
    os.replace(temporary, Path(folder) / f"{name}.result")


def results(folder, names, poll_s=0.2):
    """{name: result} of every item, waiting as long as any is being worked on: a process that dies ends the run
    through torchrun, not through a timeout here."""
    paths = {name: Path(folder) / f"{name}.result" for name in names}
    while not all(path.exists() for path in paths.values()):
        time.sleep(poll_s)
    return {name: path.read_text() for name, path in paths.items()}


def synchronised_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps):
    """Batch norm in training whose statistics cover the global batch of all
    processes: the per-channel sums are all-reduced with autograd, so the
    backward pass is synchronised too. Updates the running statistics."""
    C = x.shape[1]
    xf = at_least_fp32(x)
    n = x.numel() / C
    # Var = E[x^2] - mean^2 cancels catastrophically in float32 for a channel whose mean is large
    # against its spread (it can even turn negative). Each process centres its own sum of squares,
    # and the parts are summed in float64: sum_r (M2_r + n_r mean_r^2) / N - mean^2.
    local_mean = xf.mean((0, 2, 3))
    local_m2 = (xf - local_mean.view(1, C, 1, 1)).square().sum((0, 2, 3))
    local_mean = local_mean.double()
    local = torch.cat([n * local_mean, local_m2.double() + n * local_mean.square(), local_mean.new_full((1,), n)])
    total = dist_nn.all_reduce(local)
    count = total[-1]
    mean = total[:C] / count
    var = (total[C : 2 * C] / count - mean * mean).clamp_min(0)
    count, mean, var = count.to(xf.dtype), mean.to(xf.dtype), var.to(xf.dtype)
    with torch.no_grad():
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * count / (count - 1), momentum)
    scale = (weight * torch.rsqrt(var + eps)).view(1, C, 1, 1)
    return ((xf - mean.view(1, C, 1, 1)) * scale + bias.view(1, C, 1, 1)).to(x.dtype)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm synchronised over several CPU processes (Gloo): torch's
    SyncBatchNorm runs on GPUs only."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self.num_batches_tracked += 1
        return synchronised_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                       self.momentum, self.eps)


class SyncScenarioBatchNorm2d(ScenarioBatchNorm2d):
    """ScenarioBatchNorm2d synchronised over several processes (CPU or CUDA):
    each scenario's statistics cover that scenario's global batch."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        return synchronised_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                       self.momentum, self.eps)


def synchronise_batch_norm(module, plain=True):
    """Replaces every ScenarioBatchNorm2d by a SyncScenarioBatchNorm2d and,
    with `plain`, every BatchNorm2d by a CPUSyncBatchNorm, with the same state,
    device and precision."""
    for name, child in module.named_children():
        if isinstance(child, ScenarioBatchNorm2d):
            synced = SyncScenarioBatchNorm2d(child.weight.numel(), child.scenarios, child.momentum, child.eps)
        elif plain and isinstance(child, nn.BatchNorm2d):
            synced = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum)
        else:
            synchronise_batch_norm(child, plain)
            continue
        synced = synced.to(child.weight.device, child.weight.dtype)  # before the state: float32 would round it
        synced.load_state_dict(child.state_dict())
        setattr(module, name, synced)
    return module
