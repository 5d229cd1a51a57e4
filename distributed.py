"""
Several processes (torchrun): the process group, and batch norm whose
statistics cover the global batch of all processes, on GPUs and on CPUs
(torch's SyncBatchNorm runs on GPUs only), per scenario where the model keeps
statistics per scenario. train.py's wrap_model puts the model under it.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn

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
