"""Under torchrun, for test_torchrun_pins.py:

    tests/ddp_pins.py stop N TRAIN_FLAGS...   train.py with SIGTERM to every process during the N-th loss
    tests/ddp_pins.py batchnorm OUT           one training forward of synchronised batch norm (momentum 1)
                                              on this process's half of a fixed global batch; rank 0 saves
                                              the running statistics to OUT
"""

import sys

import torch
import torch.nn as nn

import distributed
import train
from stopping import loss_signalling_at

GLOBAL_SHAPE = (4, 3, 2, 2)  # 16 values per channel in all, 8 per process


def global_batch():
    torch.manual_seed(0)
    return torch.randn(GLOBAL_SHAPE, dtype=torch.float64).float() * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)


def stop_at(n, flags):
    train.dis2_loss, _ = loss_signalling_at(n)
    status = train.main(flags)
    print(f"status {status}")


def batchnorm(out):
    _, rank, world = distributed.setup_distributed(torch.device("cpu"))
    model = distributed.synchronise_batch_norm(nn.Sequential(nn.BatchNorm2d(3, momentum=1.0))).train()
    x = global_batch().chunk(world)[rank]
    model(x)
    if rank == 0:
        torch.save({"mean": model[0].running_mean, "var": model[0].running_var, "type": type(model[0]).__name__}, out)
    distributed.leave_distributed()


if __name__ == "__main__":
    if sys.argv[1] == "stop":
        stop_at(int(sys.argv[2]), sys.argv[3:])
    else:
        batchnorm(sys.argv[2])
