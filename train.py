"""
Train DIS2, or one of the variants of the paper's ablation (Table 2), on ISPRS
Vaihingen or Potsdam (or the synthetic scenes of `python data.py synth`).

    python train.py --data vaihingen/ --epochs 100
    python train.py --resume                       # continue the latest run under runs/

Each batch trains the full scenario and one missing scenario (paper, Section 3:
the scenario mask is drawn per batch from {[True, False], [False, True]};
--p-missing-rgir is the probability that RGIR is the missing one) with the
combined objective of Eq. 14. After every epoch the held-out validation tiles
are scored in all three scenarios; `best.pt` keeps the epoch with the best
mean mF1 over the three scenarios (robustness to a missing modality is the
point of the model), `last.pt` the latest. Checkpoints hold everything a
resumed run needs and are written atomically. Ctrl-C or SIGTERM finishes the
current step, saves `last.pt` and exits; `--resume` continues exactly where
it stopped (on CPU with a fixed seed, to the same weights as a run that was
never interrupted: the patches and the scenario of every step are functions
of the seed, the epoch and the step alone).
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from PIL import Image
from tqdm import tqdm

import data
import evaluate
from data import DataError
from dis2 import ABLATIONS, DIS2, DIS2Config, LAYOUTS, SCENARIOS, ScenarioBatchNorm2d
from evaluate import (
    AMP_HELP,
    BENCHMARK_WARMUP,
    CHANNELS_LAST_HELP,
    CHECKPOINT_FORMAT,
    PRECISIONS,
    autocast_dtype,
    check_patch,
    config_dict,
    count_flops,
    evaluate_tiles,
    latest_checkpoint,
    load_checkpoint,
    measure,
    model_from_checkpoint,
    precision,
    report_benchmark,
    resolve_device,
    use_channels_last,
    writable_dir,
)
from losses import TERMS, dis2_loss, median_frequency_weights

# Flags a resumed run may change; every other setting comes from the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "compile", "amp", "channels_last")
# Defaults of the flags that set the budget: ordinary training (the paper's sizes),
# and the reproduction (--reproduce): every run of REPRODUCTION within 4 hours on 2 CPU cores or, with --full, on a GPU.
BUDGETS = {
    "train": dict(epochs=100, batch_size=8, patch=512, samples_per_epoch=2000, width=32),
    "reproduce": dict(epochs=20, batch_size=8, patch=128, samples_per_epoch=800, width=16),
    "reproduce-full": dict(epochs=100, batch_size=8, patch=512, samples_per_epoch=2000, width=32),
}
# The reproduction's runs: the four variants of Table 2 and DIS2 in the authors' per-scenario
# layout, each with its number of seeds (3 where a claim needs the spread over seeds).
REPRODUCTION = {
    "hf": dict(ablation="hf", layout="shared", seeds=3),
    "hf+cw": dict(ablation="hf+cw", layout="shared", seeds=1),
    "hf+dlkd": dict(ablation="hf+dlkd", layout="shared", seeds=1),
    "dis2": dict(ablation="dis2", layout="shared", seeds=3),
    "dis2-per-scenario": dict(ablation="dis2", layout="per-scenario", seeds=3),
}
# The synthetic benchmark of the reproduction (Vaihingen layout): tiles, tile side, generator seed.
SYNTHETIC_BENCHMARKS = {
    "reproduce": dict(tiles=33, size=640, seed=2026),
    "reproduce-full": dict(tiles=33, size=2000, seed=2026),
}


def parse_args(argv=None):
    p = data.ArgumentParser(description="Train DIS2 on ISPRS Vaihingen or Potsdam.")
    p.add_argument("--data", help="directory holding the ISPRS files (any layout below it)")
    p.add_argument("--dataset", choices=data.DATASETS, help="override the detected dataset")
    p.add_argument("--epochs", type=data.positive_int, help="epochs to train (default 100)")
    p.add_argument("--batch-size", type=data.positive_int, help="patches per step and process (default 8)")
    p.add_argument("--patch", type=data.positive_int, help="side of the square training patches, a multiple of 16 (default 512)")
    p.add_argument("--samples-per-epoch", type=data.positive_int, help="random patches per epoch (default 2000)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="adamw: AdamW, warm-up and cosine decay; sgd: the authors' SGD (Nesterov momentum 0.99, "
                        "cosine warm restarts every 15 steps)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--width", type=data.positive_int, help="encoder channels at level 1; the transformer (8 x width) and the per-class decoders (width / 2) "
                        "follow it (default: the paper's 32)")
    p.add_argument("--ablation", choices=tuple(ABLATIONS), default="dis2", help="the variant of Table 2")
    p.add_argument("--layout", choices=LAYOUTS, default="shared",
                   help="shared: one fusion, classwise attention and decoder for all scenarios; "
                        "per-scenario: one each per scenario, as the authors' code")
    p.add_argument("--p-missing-rgir", type=float, default=0.6,
                   help="probability that a batch's missing modality is RGIR (default 0.6, the authors')")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<date-time>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                   help="continue a run: its directory or checkpoint (default: the latest run under runs/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=tuple(PRECISIONS), help=AMP_HELP)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="data loader processes (default: 4 with CUDA, 0 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--benchmark", action="store_true",
                   help="check one training step and one evaluation window in each precision, then time "
                        "training steps on random inputs at --patch/--batch-size/--device, count their GFLOP "
                        "and exit (docs/speed.md)")
    p.add_argument("--repeats", type=data.positive_int, default=5, help="timed steps of --benchmark")
    p.add_argument("--reproduce", metavar="DIR",
                   help="train the runs of the reproduction (Table 2's variants and DIS2 in the authors' layout, "
                        "over seeds), score them and write DIR/tables.md and the figures (on the synthetic "
                        "benchmark, or on --data); the same command resumes; see docs/reproduction.md")
    p.add_argument("--full", action="store_true", help="with --reproduce: the paper's sizes, for a GPU")
    p.add_argument("--variants", type=variant_list,
                   help=f"with --reproduce: the runs to train, comma-separated (default: all of {','.join(REPRODUCTION)})")
    p.add_argument("--seeds", type=data.positive_int,
                   help="with --reproduce: seeds per variant (default: 3 for hf, dis2 and dis2-per-scenario, 1 for the others)")
    args = p.parse_args(argv)
    if (args.full or args.seeds or args.variants) and not args.reproduce:
        raise DataError("--full, --variants and --seeds only apply to --reproduce DIR")
    if not 0 <= args.p_missing_rgir <= 1:
        raise DataError(f"--p-missing-rgir {args.p_missing_rgir}: must be a probability in [0, 1]")
    if args.patch is not None:
        check_patch(args.patch)
    return args


def variant_list(text):
    variants = [v for v in text.split(",") if v]
    unknown = [v for v in variants if v not in REPRODUCTION]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"{text!r}: give names from {', '.join(REPRODUCTION)}, comma-separated")
    return variants


def budget_name(args):
    return "train" if not args.reproduce else "reproduce-full" if args.full else "reproduce"


def fill_budget(args):
    """Budget flags left out take the defaults of the mode (BUDGETS)."""
    for name, value in BUDGETS[budget_name(args)].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# -----------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(state, path):
    """Write to a temporary file in the same directory, then rename: a crash or
    a kill during the write leaves the previous checkpoint as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resume_checkpoint(resume):
    if resume == "latest":
        return latest_checkpoint(name="last.pt")
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def rng_states():
    states = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -----------------------------------------------------------------------------
# Training pieces


def make_optimizer(model, args, steps_per_epoch):
    total_steps = args.epochs * steps_per_epoch
    if args.optimizer == "sgd":
        # The authors' run_experiment_35.py: SGD with Nesterov momentum 0.99, torch's default learning
        # rate 1e-3, no weight decay, cosine annealing restarted every 15 optimiser steps.
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 1e-3, momentum=0.99, nesterov=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=15)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr or 1e-3, weight_decay=1e-2)
        warmup = min(500, total_steps // 10 + 1)
        schedule = lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(step / total_steps, 1.0)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler


def missing_modality(seed, step, p_missing_rgir):
    """The scenario mask of step `step`: a function of the seed and the step, so a resumed run draws the same."""
    return "rgir" if np.random.default_rng((seed, step)).random() < p_missing_rgir else "ndsm"


class StopRequest:
    """Ctrl-C or SIGTERM asks training to stop after the current step (a second Ctrl-C stops at once)."""

    def __init__(self):
        self.signal = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_sigint(_worker_id):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop


class NonFiniteLoss(Exception):
    pass


def append_metrics(path, row):
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# -----------------------------------------------------------------------------
# The run


def prepare(argv):
    """Parses the flags and, when resuming, restores the run's settings. Returns (args, checkpoint or None)."""
    args = parse_args(argv)
    checkpoint = None
    if args.resume:
        path = resume_checkpoint(args.resume)
        checkpoint = load_checkpoint(path)
        given = {k: getattr(args, k) for k in RESUMABLE_OVERRIDES if getattr(args, k) is not None}
        # Flags newer than the checkpoint take their defaults.
        args = argparse.Namespace(**{**vars(args), **checkpoint["train_args"], **given, "resume": str(path)})
        args.out = str(path.parent)
    else:
        if not args.data and not args.benchmark and not args.reproduce:
            raise DataError("--data DIR is required (the folder with the ISPRS files; `python data.py synth DIR` makes a synthetic one)")
        fill_budget(args)
    return args, checkpoint


def main(argv=None):
    args, checkpoint = prepare(argv)
    device = resolve_device(args.device)
    # Resolved for this device and stored so in the checkpoint: a resumed run keeps them unless overridden.
    args.amp = precision(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    amp_dtype = autocast_dtype(device, args.amp)
    if args.benchmark:
        return benchmark(args, device, amp_dtype)
    if args.reproduce:
        return reproduce(args, device, amp_dtype)
    device, rank, world = setup_distributed(device)
    if world == 1:
        return train(args, checkpoint, device, amp_dtype, rank, world)
    try:
        finished = train(args, checkpoint, device, amp_dtype, rank, world)
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_distributed()
    return finished


def train(args, checkpoint, device, amp_dtype, rank, world):
    """The training run; returns True when it finished, False when it was stopped (and saved)."""
    log = print if rank == 0 else lambda *a, **k: None
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    dataset = args.dataset or data.detect_dataset(args.data)
    train_tiles = data.load_split(args.data, "train", dataset)
    val_tiles = data.load_split(args.data, "val", dataset)
    patches = data.PatchDataset(train_tiles, args.patch, args.samples_per_epoch, args.seed)
    global_batch = args.batch_size * world
    steps_per_epoch = args.samples_per_epoch // global_batch
    if steps_per_epoch == 0:
        raise DataError(f"--samples-per-epoch {args.samples_per_epoch} is smaller than the global batch {global_batch}")

    out = Path(args.out or f"runs/{dataset}-{datetime.now():%Y%m%d-%H%M%S}")
    if checkpoint is None and (out / "last.pt").exists():
        raise DataError(f"--out {out}: already holds a run; continue it with --resume {out} or choose another --out")
    if rank == 0:
        writable_dir(out, "--out")

    torch.manual_seed(args.seed)
    config = DIS2Config(width=args.width, pos_size=args.patch, layout=args.layout, **ABLATIONS[args.ablation])
    net = DIS2(config).to(device)
    optimizer, scheduler = make_optimizer(net, args, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    class_weights = median_frequency_weights(data.class_frequencies(train_tiles)).to(device)

    state = dict(epoch=0, step_in_epoch=0, global_step=0, best_score=-1.0, epoch_sums={t: 0.0 for t in TERMS})
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # empty unless the run so far was fp16; switching to fp16 starts a fresh scale
            scaler.load_state_dict(checkpoint["scaler"])
        set_rng_states(checkpoint["rng"])
        state = checkpoint["state"]
        if state["epoch"] >= args.epochs:
            raise DataError(f"{args.resume}: the run already finished {state['epoch']} epochs; pass --epochs N with a larger N to go on")
        log(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step_in_epoch']} of {steps_per_epoch}")
    model = wrap_model(net, device, world, args.compile, args.channels_last)
    seconds_before, started = state.get("train_seconds", 0.0), time.perf_counter()

    def checkpoint_state():
        # The wall time spent on the run rides in every checkpoint, so a run killed without
        # warning (a session's end) loses only the time since its last save.
        seconds = seconds_before + time.perf_counter() - started
        return dict(
            format=CHECKPOINT_FORMAT, model=net.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_states(),
            state=dict(state, train_seconds=seconds),
            config=config_dict(config), train_args={k: v for k, v in vars(args).items() if k != "resume"},
            data=str(Path(args.data).resolve()), dataset=dataset,
        )

    log(f"{args.ablation}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
        f"{len(train_tiles)} training and {len(val_tiles)} validation tiles, {device}"
        f"{f', {amp_dtype}' if amp_dtype else ''}{f', {world} processes' if world > 1 else ''}; run directory {out}")
    stop = StopRequest()
    try:
        while state["epoch"] < args.epochs:
            stopped = train_epoch(model, optimizer, scheduler, scaler, patches, class_weights, args, state,
                                  steps_per_epoch, device, amp_dtype, workers, stop, rank, world)
            if stopped:
                if rank == 0:
                    save_checkpoint(checkpoint_state(), out / "last.pt")
                log(f"{stop.signal}: saved {out / 'last.pt'} at epoch {state['epoch'] + 1}, step "
                    f"{state['step_in_epoch']}; continue with: python train.py --resume {out}")
                return False
            row = validate(net, val_tiles, args, state, scheduler, steps_per_epoch, device, amp_dtype) if rank == 0 else None
            state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_sums={t: 0.0 for t in TERMS})
            if rank == 0:
                record_epoch(row, state, args.epochs, out, checkpoint_state())
            if world > 1:
                dist.barrier()  # the other processes wait for rank 0's validation and checkpoints
    except NonFiniteLoss as e:
        print(f"error: non-finite loss at epoch {state['epoch'] + 1}, step {state['global_step']}: {e}; "
              f"the last good checkpoint is {out / 'last.pt'}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop.restore()
    log(f"done: best mean mF1 {state['best_score']:.2f}; evaluate with: python evaluate.py --checkpoint {out / 'best.pt'}")
    return True


def validate(net, val_tiles, args, state, scheduler, steps_per_epoch, device, amp_dtype):
    """Scores the validation tiles in the three scenarios; returns the epoch's metrics row."""
    # Windows without overlap: half the cost of the test-time quarter overlap, and
    # model selection compares epochs with each other, not with the paper.
    results, _ = evaluate_tiles(net, val_tiles, list(SCENARIOS), args.patch, 0,
                                args.batch_size, device, amp_dtype, progress=False, channels_last=args.channels_last)
    net.train()
    score = float(np.mean([r["mF1"] or 0.0 for r in results.values()]))
    return epoch_row(state, scheduler, results, score, steps_per_epoch)


def record_epoch(row, state, epochs, out, checkpoint):
    """metrics.csv, the epoch line, last.pt and, if the score improved, best.pt."""
    append_metrics(out / "metrics.csv", row)
    print(epoch_line(row, epochs))
    improved = row["val_score"] > state["best_score"]
    if improved:
        state["best_score"] = checkpoint["state"]["best_score"] = row["val_score"]
    save_checkpoint(checkpoint, out / "last.pt")
    if improved:
        save_checkpoint(checkpoint, out / "best.pt")


def train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, missing, class_weights, amp_dtype, world=1,
               stop=None):
    """One step of Eq. 14 on the full and one missing scenario. Raises
    NonFiniteLoss (naming the term) before any weight changes. Returns the
    loss terms and whether any process asked to stop."""
    with torch.autocast(rgir.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(rgir, ndsm, scenarios=("full", f"missing_{missing}"))
    loss, terms = dis2_loss(out["full"], out[f"missing_{missing}"], label, missing, class_weights)
    # Every process must agree before the backward pass (it all-reduces gradients).
    flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, 1.0 if stop and stop.signal else 0.0], device=rgir.device)
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0]:
        bad = next((name for name, value in terms.items() if not torch.isfinite(value)), "on another process")
        raise NonFiniteLoss(f"term {bad} = {terms[bad].item() if bad in terms else 'nan'}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return terms, bool(flags[1])


def train_epoch(model, optimizer, scheduler, scaler, patches, class_weights, args, state, steps_per_epoch,
                device, amp_dtype, workers, stop, rank, world):
    """Trains the rest of the current epoch. Returns True when a stop was requested."""
    model.train()
    loader = epoch_loader(patches, state, args.batch_size, steps_per_epoch, rank, world, workers, device)
    bar = tqdm(loader, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", initial=state["step_in_epoch"],
               total=steps_per_epoch, unit="batch", leave=False, disable=rank != 0)
    for rgir, ndsm, label in bar:
        missing = missing_modality(args.seed, state["global_step"], args.p_missing_rgir)
        rgir, ndsm, label = (x.to(device, non_blocking=True) for x in (rgir, ndsm, label))
        if args.channels_last:
            rgir, ndsm = (x.contiguous(memory_format=torch.channels_last) for x in (rgir, ndsm))
        terms, stopping = train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, missing, class_weights,
                                     amp_dtype, world, stop)
        values = torch.stack(list(terms.values())).detach()
        if world > 1:
            dist.all_reduce(values)
            values /= world
        for name, value in zip(terms, values.tolist()):
            state["epoch_sums"][name] += value
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        bar.set_postfix(loss=f"{sum(values.tolist()):.3f}", missing=missing)
        if stopping:
            return True
    return False


def epoch_loader(patches, state, batch_size, steps_per_epoch, rank, world, workers, device):
    """The rest of the epoch's patches. Sample i of the epoch is fixed by (seed,
    epoch, i); step s uses samples [s*G, (s+1)*G) with G the global batch, and
    the distributed sampler deals them round-robin to the processes, so a step
    sees the same global batch whatever the number of processes."""
    patches.set_epoch(state["epoch"])
    global_batch = batch_size * world
    rest = Subset(patches, range(state["step_in_epoch"] * global_batch, steps_per_epoch * global_batch))
    sampler = DistributedSampler(rest, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    return DataLoader(rest, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", worker_init_fn=ignore_sigint)


# -----------------------------------------------------------------------------
# Several processes (torchrun) and speed


def setup_distributed(device):
    """Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE set): one process per GPU
    with NCCL, or per CPU worker with Gloo. Returns (device, rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
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
    xf = x.float()
    local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_full((1,), x.numel() / C)])
    total = dist_nn.all_reduce(local)
    count = total[-1]
    mean = total[:C] / count
    var = total[C : 2 * C] / count - mean * mean
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
    with `plain`, every BatchNorm2d by a CPUSyncBatchNorm, with the same state."""
    for name, child in module.named_children():
        if isinstance(child, ScenarioBatchNorm2d):
            synced = SyncScenarioBatchNorm2d(child.weight.numel(), child.scenarios, child.momentum, child.eps)
        elif plain and isinstance(child, nn.BatchNorm2d):
            synced = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum)
        else:
            synchronise_batch_norm(child, plain)
            continue
        synced.load_state_dict(child.state_dict())
        setattr(module, name, synced.to(child.weight.device))
    return module


def wrap_model(net, device, world, compile_model=False, channels_last=None):
    """What the training loop calls: `net` in channels-last memory (default:
    on CUDA only, see evaluate.use_channels_last), optionally compiled, and
    under DistributedDataParallel with synchronised batch norm when several
    processes train. `net` itself keeps its plain state dict for checkpoints."""
    model = net
    if use_channels_last(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        # Each step leaves one Supplement encoder (that of the missing modality) unused.
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(synchronise_batch_norm(model, plain=False))
        else:
            model = synchronise_batch_norm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
    if compile_model:
        model = torch.compile(model)
    return model


def benchmark(args, device, amp_dtype):
    """Runs self_check, then times training steps on random inputs: full plus
    one missing scenario, every term of Eq. 14, backward and optimiser step,
    as training runs them. Exits with status 1 when the self-check failed."""
    config = DIS2Config(width=args.width, pos_size=args.patch, layout=args.layout, **ABLATIONS[args.ablation])
    checked = self_check(config, args, device)
    failed = [name for name, outcome in checked.items() if outcome != "ok"]
    if args.amp in failed:
        sys.exit(1)  # the self-check's line says what failed; the timing would fail the same way
    torch.manual_seed(args.seed)
    net = DIS2(config).to(device)
    model = wrap_model(net, device, 1, args.compile, args.channels_last)
    optimizer, scheduler = make_optimizer(net, args, steps_per_epoch=args.repeats + BENCHMARK_WARMUP)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rgir, ndsm, label = random_batch(args.batch_size, args.patch, config, device, args.channels_last)
    class_weights = torch.ones(config.num_classes, device=device)
    steps = iter(range(10**9))

    def step(model=model):
        return train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, ("rgir", "ndsm")[next(steps) % 2],
                          class_weights, amp_dtype)

    flops = count_flops(lambda: step(net))  # net, not model: a compiled graph hides its operations from the counter
    result = measure(step, args.batch_size, device, BENCHMARK_WARMUP, args.repeats)
    report_benchmark("training step", result, flops, args, device, amp_dtype, self_check=checked)
    if failed:
        sys.exit(1)


def random_batch(batch_size, patch, config, device, channels_last):
    """Random inputs and labels of the model's shapes, for the benchmark and the self-check."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rgir = torch.randn(batch_size, config.rgir_channels, patch, patch, device=device).contiguous(memory_format=memory_format)
    ndsm = torch.randn(batch_size, config.ndsm_channels, patch, patch, device=device).contiguous(memory_format=memory_format)
    return rgir, ndsm, torch.randint(0, config.num_classes, (batch_size, patch, patch), device=device)


def self_check(config, args, device):
    """One training step and one evaluation window (the three scenarios, scored
    as validation scores them) in each precision, with this command's model,
    channels-last and compile settings, on inputs of at most 64x64 pixels:
    the code paths are checked, not the sizes (fp16 is slow on CPU). On a new GPU this
    finds what a long run would otherwise meet in its first step or its first
    validation. Prints one line; returns precision -> "ok" or what failed."""
    window, outcome = min(args.patch, 64), {}
    for name in PRECISIONS:
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue  # --amp refuses it on such a GPU
        amp_dtype, stage = autocast_dtype(device, name), "training step"
        try:
            torch.manual_seed(args.seed)
            net = DIS2(config).to(device)
            model = wrap_model(net, device, 1, args.compile, args.channels_last)
            optimizer = torch.optim.AdamW(net.parameters())
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
            rgir, ndsm, label = random_batch(2, window, config, device, args.channels_last)
            class_weights = torch.ones(config.num_classes, device=device)
            train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, "rgir", class_weights, amp_dtype)
            if not all(torch.isfinite(p).all() for p in net.parameters()):
                raise NonFiniteLoss("non-finite weights after the step")
            stage = "evaluation window"
            rng = np.random.default_rng(args.seed)
            tile = data.Tile("self-check", rng.integers(0, 256, (window, window, 3), np.uint8),
                             rng.integers(0, 256, (window, window), np.uint8),
                             rng.integers(0, config.num_classes, (window, window), np.uint8), None)
            evaluate_tiles(model, [tile], list(SCENARIOS), window, 0, 1, device, amp_dtype, progress=False,
                           channels_last=args.channels_last)
            outcome[name] = "ok"
        except Exception as e:  # what failed, and where, is the answer of the check
            outcome[name] = f"{stage}: {type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"
    settings = f"{'channels-last' if args.channels_last else 'contiguous memory'}, {'compiled' if args.compile else 'eager'}"
    works = [name for name, result in outcome.items() if result == "ok"]
    failures = [f"--amp {name}: {result}" for name, result in outcome.items() if result != "ok"]
    line = f"self-check on {device.type} ({settings}): "
    if failures:
        line += "FAILED " + "; ".join(failures) + (f"; works with --amp {', '.join(works)}" if works else "")
    else:
        line += f"one training step and one evaluation window work with --amp {', '.join(works)}"
    print(line)
    return outcome


# -----------------------------------------------------------------------------
# The paper's experiments in one command: Tables 1-3 and Figures 3, 4 and 6


def reproduce(args, device, amp_dtype):
    """Trains every variant of REPRODUCTION with its seeds at one budget,
    scores each run on the test tiles in the three scenarios and writes
    DIR/tables.md (means and spreads over seeds, paired differences against
    HF, the claims), DIR/results.json and the figures. Without --data it
    first writes the synthetic benchmark (SYNTHETIC_BENCHMARKS) to DIR/data.
    Runs go seed by seed (every variant's first seed, then the second, ...);
    finished runs are reused and a stopped run resumes, so the same command
    continues an interrupted reproduction, in as many parts as it takes."""
    out = writable_dir(args.reproduce, "--reproduce")
    mode = budget_name(args)
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data and not data_dir.exists():
        data.synthesize(data_dir, "vaihingen", **SYNTHETIC_BENCHMARKS[mode])
    variants = args.variants or list(REPRODUCTION)
    seeds = {v: [args.seed + k for k in range(args.seeds or REPRODUCTION[v]["seeds"])] for v in variants}
    for k in range(max(len(s) for s in seeds.values())):
        for variant in variants:
            if k < len(seeds[variant]) and not reproduce_run(args, variant, seeds[variant][k], out, data_dir, device, amp_dtype):
                return  # stopped by Ctrl-C or SIGTERM; the same command resumes

    runs = {v: {seed: out / "runs" / v / f"seed{seed}" for seed in seeds[v]} for v in variants}
    results = {v: {seed: json.loads((run / "test.json").read_text()) for seed, run in rs.items()} for v, rs in runs.items()}
    curves = {v: {seed: training_curve(run / "metrics.csv") for seed, run in rs.items()} for v, rs in runs.items()}
    training = {v: {seed: loss_flattening(curve) for seed, curve in cs.items()} for v, cs in curves.items()}
    hours = sum(r["train_seconds"] + r["evaluate_seconds"] for rs in results.values() for r in rs.values()) / 3600
    test_tiles = data.load_split(data_dir, "test", args.dataset)
    source = f"the data in {args.data}" if args.data else (
        "the synthetic benchmark `data.synthesize(DIR, 'vaihingen', " +
        ", ".join(f"{k}={v}" for k, v in SYNTHETIC_BENCHMARKS[mode].items()) + ")`")
    budget = ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in BUDGETS[mode])
    title = (f"DIS2 reproduction on {source}, {len(test_tiles)} test tiles; budget per run: {budget}; "
             f"seeds from {args.seed}; {device}; {hours:.1f} h of training and evaluation in all")
    (out / "tables.md").write_text(evaluate.tables_markdown(results, training, title))
    (out / "results.json").write_text(json.dumps(dict(title=title, runs=results, training_curves=curves), indent=2))
    reproduction_figures(out, seeds, test_tiles, curves)
    print((out / "tables.md").read_text())
    print(f"figures: {', '.join(str(p) for p in sorted(out.glob('figure*.png')))}")


def reproduce_run(args, variant, seed, out, data_dir, device, amp_dtype):
    """Trains (or resumes) one run of the reproduction and scores its best
    checkpoint on the test tiles into run/test.json, with the wall time of
    both. Returns False when training was stopped."""
    run = out / "runs" / variant / f"seed{seed}"
    if (run / "test.json").exists():
        print(f"{variant}, seed {seed}: trained and scored already ({run})")
        return True
    checkpoint = load_checkpoint(run / "last.pt") if (run / "last.pt").exists() else None
    if not checkpoint or checkpoint["state"]["epoch"] < args.epochs:
        run_args = argparse.Namespace(**{**vars(args), **{k: v for k, v in REPRODUCTION[variant].items() if k != "seeds"},
                                         "seed": seed, "out": str(run), "data": str(data_dir), "reproduce": None,
                                         "full": False, "resume": str(run / "last.pt") if checkpoint else None})
        if not train(run_args, checkpoint, device, amp_dtype, rank=0, world=1):
            return False
        checkpoint = load_checkpoint(run / "last.pt")
    # Training may take several sessions: last.pt holds its wall time summed over them.
    train_seconds = checkpoint["state"]["train_seconds"]
    start = time.perf_counter()
    model = model_from_checkpoint(load_checkpoint(run / "best.pt"), device, channels_last=args.channels_last)
    # Colour maps of HF's and DIS2's runs feed Figure 3.
    save_dir = writable_dir(run / "predictions", "--reproduce") if variant in ("hf", "dis2") else None
    test_tiles = data.load_split(data_dir, "test", args.dataset)
    scores, distances = evaluate_tiles(model, test_tiles, list(SCENARIOS),
                                       args.patch, args.patch // 4, args.batch_size, device, amp_dtype,
                                       feature_distance=True, save_dir=save_dir, channels_last=args.channels_last)
    result = dict(scores=scores, feature_distance=evaluate.distances_by_name(distances),
                  train_seconds=train_seconds, evaluate_seconds=time.perf_counter() - start)
    # Figures 4 and 6 now, while the model is at hand: a later session may no longer have the
    # checkpoints (they are not committed). Each run keeps its own, so seeds can run in parallel;
    # reproduction_figures copies the first seed's.
    if variant == "dis2":
        evaluate.figure_attention(model, test_tiles[0], args.patch, device, run / FIGURE6_NAME)
    if variant in FIGURE4_NAMES:
        evaluate.figure_queries(model, test_tiles[0], args.patch, device, run / FIGURE4_NAMES[variant])
    (run / "test.json").write_text(json.dumps(result, indent=2))
    return True


def training_curve(metrics_csv):
    """[(step, training segmentation loss)] per epoch: L_seg of the full plus the missing scenario."""
    with open(metrics_csv) as f:
        return [(int(row["step"]), float(row["seg_full"]) + float(row["seg_miss"])) for row in csv.DictReader(f)]


def loss_flattening(curve):
    """(final loss, relative drop over the last quarter of the epochs): a flat curve drops little."""
    losses = [loss for _, loss in curve]
    before = losses[max(len(losses) - 1 - len(losses) // 4, 0)]
    return losses[-1], (before - losses[-1]) / before


FIGURE4_NAMES = {"dis2": "figure4_queries.png", "dis2-per-scenario": "figure4_queries_per_scenario.png"}
FIGURE6_NAME = "figure6_attention.png"  # of DIS2, shared layout


def reproduction_figures(out, seeds, test_tiles, curves):
    """Figure 3 (predictions of HF and DIS2 from the first seed's colour maps),
    the training-loss curves of every run, and Figures 4 and 6 of the first
    seed, which reproduce_run drew into its run directory."""
    evaluate.figure_training_loss(curves, out / "figure_training_loss.png")
    first_run = lambda v: out / "runs" / v / f"seed{seeds[v][0]}"
    for variant, name in [*FIGURE4_NAMES.items(), ("dis2", FIGURE6_NAME)]:
        if variant in seeds:
            shutil.copyfile(first_run(variant) / name, out / name)
    figure_tiles = test_tiles[:3]
    maps = lambda v: first_run(v) / "predictions"
    predictions = {v: {s: {t.name: data.rgb_to_labels(np.asarray(Image.open(maps(v) / f"{t.name}_{s}.png")))
                           for t in figure_tiles} for s in SCENARIOS} for v in ("hf", "dis2") if v in seeds}
    evaluate.figure_predictions(figure_tiles, predictions, out / "figure3_predictions.png")


def epoch_row(state, scheduler, results, score, steps_per_epoch):
    row = dict(epoch=state["epoch"] + 1, step=state["global_step"], lr=scheduler.get_last_lr()[0])
    means = {name: total / steps_per_epoch for name, total in state["epoch_sums"].items()}
    row["loss"] = sum(means.values())
    row.update(means)
    for scenario, r in results.items():
        row[f"val_{scenario}_mF1"] = r["mF1"]
        row[f"val_{scenario}_mIoU"] = r["mIoU"]
    row["val_score"] = score
    return row


def epoch_line(row, epochs):
    terms = " ".join(f"{name} {row[name]:.3f}" for name in TERMS)
    val = " ".join(f"{s} {row[f'val_{s}_mF1'] or 0:.1f}" for s in SCENARIOS)
    return f"epoch {row['epoch']}/{epochs} loss {row['loss']:.3f} ({terms}) | val mF1: {val} | score {row['val_score']:.2f}"


if __name__ == "__main__":
    data.exit_on_user_error(main)
