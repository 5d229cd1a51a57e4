"""One training step of train.py's code on a fixed global batch, in one process
or under torchrun; saves the gradients (rank 0). Used by test_distributed.py.
In float64, as tests/ddp_variants.py says why: in float32 one and two
processes may differ by a ReLU that rounding puts on either side of 0."""

import sys

import numpy as np
import torch

import data
import distributed
import train
from dis2 import DIS2, DIS2Config

GLOBAL_BATCH, PATCH = 4, 32
DTYPE = torch.float64


def tiles():
    rng = np.random.default_rng(0)
    return [
        data.Tile(f"t{i}", rng.integers(0, 256, (48, 48, 3), np.uint8), rng.integers(0, 256, (48, 48), np.uint8),
                  rng.integers(0, 6, (48, 48), np.uint8), None)
        for i in range(2)
    ]


def main(out_path, missing):
    device, rank, world = distributed.setup_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    net = DIS2(DIS2Config(width=4, embed_dim=16, heads=2, depth=1, class_width=2, pos_size=PATCH)).to(DTYPE)
    model = train.wrap_model(net, device, world)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    patches = data.PatchDataset(tiles(), PATCH, samples_per_epoch=GLOBAL_BATCH, seed=0)
    state = dict(epoch=0, step_in_epoch=0)
    loader = train.epoch_loader(patches, state, GLOBAL_BATCH // world, 1, rank, world, 0, device)
    rgir, ndsm, label = next(iter(loader))
    model.train()
    train.train_step(model, optimizer, scheduler, scaler, rgir.to(DTYPE), ndsm.to(DTYPE), label, missing,
                     torch.linspace(0.5, 2, 6, dtype=DTYPE), None, world)
    if rank == 0:
        torch.save({name: p.grad for name, p in net.named_parameters()}, out_path)
    return world


if __name__ == "__main__":
    if main(sys.argv[1], sys.argv[2]) > 1:
        distributed.leave_distributed()  # after main's DDP model is gone, as train.main does
