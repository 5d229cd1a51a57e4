"""
Train DIS2, or one of the variants of the paper's ablation (Table 2), on ISPRS
Vaihingen or Potsdam (or the synthetic scenes of `python synth.py`).

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
import random
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import data
import own_data
from data import DataError
from dis2 import ABLATIONS, DIS2, DIS2Config, LAYOUTS, SCENARIOS
from distributed import leave_distributed, setup_distributed, synchronise_batch_norm
from evaluate import evaluate_tiles
from losses import AUTHORS_ORTH_LEVELS, RECIPES, TERMS, dis2_loss, median_frequency_weights
from shaspec import SHASPEC_TERMS, SHASPEC_VARIANTS, ShaSpec, ShaSpecConfig, shaspec_loss
from runtime import (
    AMP_HELP,
    CHANNELS_LAST_HELP,
    DEVICE_HELP,
    CHECKPOINT_FORMAT,
    PRECISIONS,
    autocast_dtype,
    check_patch,
    config_dict,
    latest_checkpoint,
    load_checkpoint,
    precision,
    resolve_device,
    save_checkpoint,
    set_cuda_backends,
    use_channels_last,
    writable_dir,
)

# Flags a resumed run may change; every other setting comes from the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "compile", "amp", "channels_last")
# Defaults of the flags that set the budget: the paper's sizes.
BUDGET = dict(epochs=100, batch_size=8, patch=512, samples_per_epoch=2000, width=32)
# The variants --ablation trains: Table 2's four, and ShaSpec, the comparison method of Table 1 (shaspec.py),
# with its alignment in either form.
VARIANTS = (*ABLATIONS, *SHASPEC_VARIANTS)
# The authors' recipe (--recipe authors, losses.RECIPES): distillation weighted 5 and switched on after
# their first 6 epochs (`kl_loss_weight = 5.0 if epoch > 5 else 0.0`). Their run length is not in the
# paper; 6 of the 100 epochs of their script's default is taken as the fraction of the steps.
AUTHORS_DISTILL_WEIGHT = 5.0
AUTHORS_DISTILL_START = 0.06
# Flags of earlier versions that now belong to another command.
MOVED = {
    **{flag: "python reproduce.py DIR" for flag in ("--reproduce", "--full", "--variants", "--seeds")},
    "--benchmark": "python bench.py",
    "--repeats": "python bench.py",
}


def training_parser(description="Train DIS2 on ISPRS Vaihingen or Potsdam.", budget_defaults=None):
    """The flags of a training run; reproduce.py adds its own to the same parser. `budget_defaults`:
    flag name -> the default its help states (default: BUDGET's, the paper's sizes)."""
    said = budget_defaults or {**{name: f"{value}" for name, value in BUDGET.items()}, "width": "the paper's 32"}
    p = data.ArgumentParser(description=description)
    p.add_argument("--data", help="directory of the ISPRS files (any layout below it) or of one's own with classes.json")
    p.add_argument("--dataset", choices=data.DATASETS, help="override the detected dataset")
    p.add_argument("--epochs", type=data.positive_int, help=f"epochs to train (default {said['epochs']})")
    p.add_argument("--batch-size", type=data.positive_int, help=f"patches per step and process (default {said['batch_size']})")
    p.add_argument("--patch", type=data.positive_int,
                   help=f"side of the square training patches, a multiple of 16 (default {said['patch']})")
    p.add_argument("--samples-per-epoch", type=data.positive_int,
                   help=f"random patches per epoch (default {said['samples_per_epoch']})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="adamw: AdamW, warm-up and cosine decay; sgd: the authors' SGD (Nesterov momentum 0.99, "
                        "cosine warm restarts every 15 steps)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--width", type=data.positive_int, help="encoder channels at level 1; the transformer (8 x width) and the per-class decoders (width / 2) "
                        f"follow it (default: {said['width']})")
    p.add_argument("--ablation", choices=VARIANTS, default="dis2",
                   help="the variant of Table 2, or ShaSpec on HF's fusion and decoder (Table 1's comparison): shaspec "
                        "aligns its shared features at every level, shaspec-authors as the authors' code (docs/design.md)")
    p.add_argument("--recipe", choices=RECIPES, default="paper",
                   help="paper: Eq. 2-6 and 14 as printed; authors: DLKD as the authors' code computes and weights it "
                        "(docs/design.md)")
    p.add_argument("--layout", choices=LAYOUTS, default="shared",
                   help="shared: one fusion, classwise attention and decoder for all scenarios; "
                        "per-scenario: one each per scenario, as the authors' code")
    p.add_argument("--p-missing-rgir", type=float, default=0.6,
                   help="probability that a batch's missing modality is RGIR (default 0.6, the authors')")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<date-time>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                   help="continue a run: its directory or checkpoint (default: the latest run under runs/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", choices=tuple(PRECISIONS), help=AMP_HELP)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the patches and the missing-modality draws (default %(default)s)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 4 with CUDA, 0 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def parse_args(argv=None):
    data.refuse_moved(argv, MOVED)
    return check_args(training_parser().parse_args(argv))


def check_args(args):
    if not 0 <= args.p_missing_rgir <= 1:
        raise DataError(f"--p-missing-rgir {args.p_missing_rgir}: must be a probability in [0, 1]")
    if args.patch is not None:
        check_patch(args.patch)
    return args


def fill_budget(args, budget=BUDGET):
    """Budget flags left out take the defaults of `budget`."""
    for name, value in budget.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# -----------------------------------------------------------------------------
# Checkpoints


def resume_checkpoint(resume):
    if resume == "latest":
        return latest_checkpoint(name="last.pt", flag="--resume")
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def rng_states():
    """The random generators' states; on CUDA that of this process's GPU only, so a run resumes on a
    node with another number of GPUs."""
    states = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before 2026-12-04: one state per visible GPU
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


# -----------------------------------------------------------------------------
# Training pieces


def make_optimizer(model, args, steps_per_epoch, extension=None):
    """The optimiser and its learning-rate schedule, stepped once per optimiser step.
    `extension`: see cosine_schedule."""
    if args.optimizer == "sgd":
        # The authors' run_experiment_35.py: SGD with Nesterov momentum 0.99, torch's default learning
        # rate 1e-3, no weight decay, cosine annealing restarted every 15 optimiser steps.
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 1e-3, momentum=0.99, nesterov=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=15)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr or 1e-3, weight_decay=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(args.epochs * steps_per_epoch, extension))
    return optimizer, scheduler


def cosine_schedule(total_steps, extension=None):
    """The multiplier of the peak learning rate at each optimiser step: a linear warm-up over
    min(500, 10% of the steps), then a cosine decay to 0 at `total_steps`. A run whose length
    changed on resume passes `extension` = (step, multiplier at that step): from there the
    multiplier decays by a cosine from where it was to 0 at the new `total_steps`, so the
    learning rate goes on without a jump."""
    warmup = min(500, total_steps // 10 + 1)

    def schedule(step):
        if extension is not None and step >= extension[0]:
            start, factor = extension
            return factor * 0.5 * (1 + np.cos(np.pi * min((step - start) / max(total_steps - start, 1), 1.0)))
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(step / total_steps, 1.0)))

    return schedule


def schedule_extension(checkpoint, args):
    """(step, multiplier) where a resumed AdamW run's schedule is re-planned: when --epochs differs
    from the checkpoint's, now; else the one the run already had (None: the original schedule)."""
    extension = checkpoint["state"].get("schedule_extension")
    if args.optimizer != "adamw" or args.epochs == checkpoint["train_args"]["epochs"]:
        return extension
    scheduler = checkpoint["scheduler"]
    factor = scheduler["_last_lr"][0] / scheduler["base_lrs"][0]
    if factor <= 0:
        raise DataError(f"{args.resume}: the run has finished its learning-rate schedule (the rate is 0), so training "
                        f"on would not change it; to train for {args.epochs} epochs, start a new run with --epochs {args.epochs}")
    return scheduler["last_epoch"], factor


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


def write_metrics(path, rows):
    """metrics.csv, one row per finished epoch, written whole from the rows the checkpoint keeps."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def metrics_so_far(checkpoint, path):
    """The epoch rows of a resumed run. A checkpoint keeps its own; one written before it did has
    only metrics.csv, of which the rows past the checkpoint's epoch (a run stopped between writing
    metrics.csv and last.pt) are not the run's."""
    if "metrics" in checkpoint["state"]:
        return checkpoint["state"]["metrics"]
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: int(v) if k in ("epoch", "step") else float(v) if v else None for k, v in row.items()}
                for row in csv.DictReader(f) if int(row["epoch"]) <= checkpoint["state"]["epoch"]]


# -----------------------------------------------------------------------------
# The run


def prepare(argv):
    """Parses the flags and, when resuming, restores the run's settings. Returns (args, checkpoint or None)."""
    args = parse_args(argv)
    checkpoint = None
    if args.resume:
        path = resume_checkpoint(args.resume)
        checkpoint = load_checkpoint(path, flag="--resume")
        given = {k: getattr(args, k) for k in RESUMABLE_OVERRIDES if getattr(args, k) is not None}
        # Flags newer than the checkpoint take their defaults.
        args = argparse.Namespace(**{**vars(args), **checkpoint["train_args"], **given, "resume": str(path)})
        args.out = str(path.parent)
    else:
        if not args.data:
            raise DataError("--data DIR is required (the folder with the ISPRS files; `python synth.py DIR` makes a synthetic one)")
        fill_budget(args)
    return args, checkpoint


def main(argv=None):
    args, checkpoint = prepare(argv)
    # This process's GPU is set before anything asks CUDA about it, so each rank opens its context
    # on its own GPU only.
    device, rank, world = setup_distributed(resolve_device(args.device))
    # Resolved for this device and stored so in the checkpoint: a resumed run keeps them unless overridden.
    args.amp = precision(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    amp_dtype = autocast_dtype(device, args.amp)
    if device.type == "cuda":
        set_cuda_backends(amp_dtype)
    if world == 1:
        return train(args, checkpoint, device, amp_dtype, rank, world)
    try:
        status = train(args, checkpoint, device, amp_dtype, rank, world)
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_distributed()
    return status


def train(args, checkpoint, device, amp_dtype, rank, world):
    """The training run. Returns its exit status: 0 when it finished, else (last.pt saved) a shell's for the
    signal that stopped it, 128 + its number (Ctrl-C 130, SIGTERM 143; a process stopped by another: 143)."""
    log = print if rank == 0 else lambda *a, **k: None
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    dataset, train_tiles, val_tiles, own = own_data.training_tiles(args.data, args.dataset, summarise=rank == 0)
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
    net = build_model(args, own).to(device)
    config = net.config
    extension = schedule_extension(checkpoint, args) if checkpoint is not None else None
    optimizer, scheduler = make_optimizer(net, args, steps_per_epoch, extension)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    class_weights = median_frequency_weights(data.class_frequencies(train_tiles, config.num_classes)).to(device)

    state = dict(epoch=0, step_in_epoch=0, global_step=0, best_score=-1.0, epoch_sums={t: 0.0 for t in loss_terms(args)},
                 metrics=[], world=world)
    if checkpoint is not None:
        # The global batch, the steps per epoch and the position within the epoch are those of the
        # processes that trained so far (checkpoints before 2026-12-04 do not record them).
        trained_by = checkpoint["state"].get("world", world)
        if trained_by != world:
            raise DataError(f"{args.resume}: trained by {trained_by} process{'es' if trained_by > 1 else ''}, resumed "
                            f"by {world}; resume with the same number (torchrun --nproc_per_node={trained_by}, "
                            f"or plain python for 1)")
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # empty unless the run so far was fp16; switching to fp16 starts a fresh scale
            scaler.load_state_dict(checkpoint["scaler"])
        set_rng_states(checkpoint["rng"])
        state = dict(checkpoint["state"], schedule_extension=extension, metrics=metrics_so_far(checkpoint, out / "metrics.csv"),
                     world=world)
        if state["epoch"] >= args.epochs:
            go_on = ("pass --epochs N with a larger N to go on" if args.optimizer == "sgd" else
                     "its learning rate has decayed to 0; to train longer, start a new run with a larger --epochs")
            raise DataError(f"{args.resume}: the run already finished {state['epoch']} epochs; {go_on}")
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
            architecture=type(net).__name__, config=config_dict(config),
            train_args={k: v for k, v in vars(args).items() if k != "resume"},
            data=str(Path(args.data).resolve()), dataset=dataset, own_data=own,
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
                log(f"{stop.signal or 'stopped'}: saved {out / 'last.pt'} at epoch {state['epoch'] + 1}, step "
                    f"{state['step_in_epoch']}; continue with: python train.py --resume {out}")
                return 128 + signal.Signals[stop.signal or "SIGTERM"]
            row = validate(net, val_tiles, args, state, scheduler, steps_per_epoch, device, amp_dtype, own) if rank == 0 else None
            state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_sums={t: 0.0 for t in loss_terms(args)})
            if rank == 0:
                record_epoch(row, state, args.epochs, out, checkpoint_state)
            if world > 1:
                dist.barrier()  # the other processes wait for rank 0's validation and checkpoints
    except NonFiniteLoss as e:
        print(f"error: non-finite loss at epoch {state['epoch'] + 1}, step {state['global_step']}: {e}; "
              f"the last good checkpoint is {out / 'last.pt'}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop.restore()
    log(f"done: best mean mF1 {state['best_score']:.2f}; evaluate with: python evaluate.py --checkpoint {out / 'best.pt'}")
    return 0


def validate(net, val_tiles, args, state, scheduler, steps_per_epoch, device, amp_dtype, own=None):
    """Scores the validation tiles in the three scenarios; returns the epoch's metrics row."""
    # Windows without overlap: half the cost of the test-time quarter overlap, and
    # model selection compares epochs with each other, not with the paper.
    results, _, _ = evaluate_tiles(net, val_tiles, list(SCENARIOS), args.patch, 0, args.batch_size, device, amp_dtype,
                                   progress=False, channels_last=args.channels_last, classes=own_data.class_table(own))
    net.train()
    score = float(np.mean([r["mF1"] or 0.0 for r in results.values()]))
    return epoch_row(state, scheduler, results, score, steps_per_epoch)


def record_epoch(row, state, epochs, out, checkpoint_state):
    """metrics.csv, the epoch line, last.pt and, if the score improved, best.pt. The rows ride in the
    checkpoint too, so a resumed run's metrics.csv is the checkpoint's, whenever it was stopped."""
    state["metrics"].append(row)
    improved = row["val_score"] > state["best_score"]
    if improved:
        state["best_score"] = row["val_score"]
    checkpoint = checkpoint_state()
    write_metrics(out / "metrics.csv", state["metrics"])
    print(epoch_line(row, epochs))
    save_checkpoint(checkpoint, out / "last.pt")
    if improved:
        save_checkpoint(checkpoint, out / "best.pt")


def build_model(args, own=None):
    """The network of --ablation at --width, positional embeddings sized for --patch; bands and classes of `own`."""
    sizes = own_data.model_sizes(own)
    if args.ablation in SHASPEC_VARIANTS:
        return ShaSpec(ShaSpecConfig(width=args.width, pos_size=args.patch, **SHASPEC_VARIANTS[args.ablation], **sizes))
    # The authors' recipe constrains 3 levels with Eq. 2: the model pools only those.
    orth_levels = AUTHORS_ORTH_LEVELS if args.recipe == "authors" else None
    return DIS2(DIS2Config(width=args.width, pos_size=args.patch, layout=args.layout, orth_levels=orth_levels,
                           **ABLATIONS[args.ablation], **sizes))


def loss_terms(args):
    return SHASPEC_TERMS if args.ablation in SHASPEC_VARIANTS else TERMS


def distill_weight(args, step, total_steps):
    """The weight of L_distill at `step`: 1 in Eq. 14; the authors' 5, and 0 before AUTHORS_DISTILL_START."""
    if args.recipe == "paper":
        return 1.0
    return AUTHORS_DISTILL_WEIGHT if step >= AUTHORS_DISTILL_START * total_steps else 0.0


def objective(args, config, step, total_steps):
    """The loss of the step: (full output, missing output, target, missing, class weights) -> (total, terms)."""
    if args.ablation in SHASPEC_VARIANTS:
        return lambda *batch: shaspec_loss(*batch, alpha=config.alpha, beta=config.beta, alignment=config.alignment)
    weight = distill_weight(args, step, total_steps)
    return lambda *batch: dis2_loss(*batch, recipe=args.recipe, distill_weight=weight)


def train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, missing, class_weights, amp_dtype, world=1,
               stop=None, loss_fn=None):
    """One step of Eq. 14 (or of `loss_fn`, see objective) on the full and one
    missing scenario. Raises NonFiniteLoss (naming the term) before any weight
    changes. Returns the loss terms and whether any process asked to stop."""
    with torch.autocast(rgir.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(rgir, ndsm, scenarios=("full", f"missing_{missing}"))
    loss, terms = (loss_fn or dis2_loss)(out["full"], out[f"missing_{missing}"], label, missing, class_weights)
    # Every process must agree before the backward pass (it all-reduces gradients).
    flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, 1.0 if stop and stop.signal else 0.0], device=rgir.device)
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0]:
        bad = next((name for name, value in terms.items() if not torch.isfinite(value)), "on another process")
        raise NonFiniteLoss(f"term {bad} = {terms[bad].item() if bad in terms else 'nan'}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    # In fp16 the scaler skips the optimiser step when gradients overflowed, and lowers its scale:
    # the schedule follows the optimiser's steps.
    if scaler.get_scale() >= scale:
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
        loss_fn = objective(args, unwrapped(model).config, state["global_step"], args.epochs * steps_per_epoch)
        terms, stopping = train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, missing, class_weights,
                                     amp_dtype, world, stop, loss_fn)
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


def unwrapped(model):
    """The network inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


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
# Several processes (torchrun)


def wrap_model(net, device, world, compile_model=False, channels_last=None):
    """What the training loop calls: `net` in channels-last memory (default:
    on CUDA only, see runtime.use_channels_last), optionally compiled, and
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
    terms = " ".join(f"{name} {row[name]:.3f}" for name in row if name in (*TERMS, *SHASPEC_TERMS))
    val = " ".join(f"{s} {row[f'val_{s}_mF1'] or 0:.1f}" for s in SCENARIOS)
    return f"epoch {row['epoch']}/{epochs} loss {row['loss']:.3f} ({terms}) | val mF1: {val} | score {row['val_score']:.2f}"


if __name__ == "__main__":
    data.exit_on_user_error(lambda: sys.exit(main()))
