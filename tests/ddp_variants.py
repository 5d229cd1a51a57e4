"""Three training steps of every configuration train.py can train (each
--ablation, both --layout, both --recipe where DLKD is on), with train.py's
own model, objective, wrapper, loader and step, in one process or under
torchrun; every process saves its weights after the steps. Used by
test_distributed.py: under DistributedDataParallel a forward output that
carries gradient but enters no loss ends the second step, and the processes'
weights must stay identical.

In float64 (the model, the patches and the class weights): two processes
round differently from one (batch-norm sums over their halves, kernels for
half the batch), and in float32 a rounding of 1e-6 puts a pre-activation
near 0 on the other side of a ReLU now and then; that sample's gradient at
that position appears or vanishes, and three steps at a learning rate of 0.1
carry it to 1e-2 of a weight. Which configuration it hits depends on the CPU
and the seed. In float64 the roundings are 1e-16 and no ReLU flips, so one
and two processes agree to 1e-12 and a real difference (a statistic of one
process's half of the batch) stands out.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_variants.py OUT_DIR
"""

import argparse
import sys
from pathlib import Path

import torch

import distributed
import train
from ddp_step import GLOBAL_BATCH, PATCH, tiles
from dis2 import ABLATIONS, LAYOUTS
from losses import RECIPES
import data

STEPS = 3
DTYPE = torch.float64
MISSING = ("rgir", "ndsm", "rgir")  # both missing scenarios within the three steps


def configurations():
    """(name, train.py flags) of every configuration train.py trains."""
    for ablation in train.VARIANTS:
        layouts = ("shared",) if ablation not in ABLATIONS else LAYOUTS
        recipes = RECIPES if ablation in ABLATIONS and ABLATIONS[ablation]["dlkd"] else ("paper",)
        for layout in layouts:
            for recipe in recipes:
                yield f"{ablation}-{layout}-{recipe}", dict(ablation=ablation, layout=layout, recipe=recipe)


def train_configuration(flags, device, rank, world):
    args = argparse.Namespace(width=4, patch=PATCH, seed=0, **flags)
    torch.manual_seed(0)
    net = train.build_model(args).to(DTYPE)
    model = train.wrap_model(net, device, world)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    patches = data.PatchDataset(tiles(), PATCH, samples_per_epoch=STEPS * GLOBAL_BATCH, seed=0)
    state = dict(epoch=0, step_in_epoch=0)
    loader = train.epoch_loader(patches, state, GLOBAL_BATCH // world, STEPS, rank, world, 0, device)
    model.train()
    for step, ((rgir, ndsm, label), missing) in enumerate(zip(loader, MISSING)):
        loss_fn = train.objective(args, net.config, step, STEPS)
        train.train_step(model, optimizer, scheduler, scaler, rgir.to(DTYPE), ndsm.to(DTYPE), label, missing,
                         torch.linspace(0.5, 2, 6, dtype=DTYPE), None, world, loss_fn=loss_fn)
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def main(out_dir):
    device, rank, world = distributed.setup_distributed(torch.device("cpu"))
    for name, flags in configurations():
        weights = train_configuration(flags, device, rank, world)
        torch.save(weights, Path(out_dir) / f"{name}.rank{rank}.pt")
    return world


if __name__ == "__main__":
    if main(sys.argv[1]) > 1:
        distributed.leave_distributed()
