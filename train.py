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
import os
import random
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import data
from data import DataError
from dis2 import ABLATIONS, DIS2, DIS2Config, SCENARIOS
from evaluate import (
    CHECKPOINT_FORMAT,
    autocast_dtype,
    config_dict,
    evaluate_tiles,
    latest_checkpoint,
    load_checkpoint,
    resolve_device,
    writable_dir,
)
from losses import TERMS, dis2_loss, median_frequency_weights

# Flags a resumed run may change; every other setting comes from the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers")


def parse_args(argv=None):
    p = data.ArgumentParser(description="Train DIS2 on ISPRS Vaihingen or Potsdam.")
    p.add_argument("--data", help="directory holding the ISPRS files (any layout below it)")
    p.add_argument("--dataset", choices=data.DATASETS, help="override the detected dataset")
    p.add_argument("--epochs", type=data.positive_int, help="epochs to train (default 100)")
    p.add_argument("--batch-size", type=data.positive_int, default=8)
    p.add_argument("--patch", type=data.positive_int, default=512, help="side of the square training patches, a multiple of 16")
    p.add_argument("--samples-per-epoch", type=data.positive_int, default=2000, help="random patches per epoch")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="adamw: AdamW, warm-up and cosine decay; sgd: the authors' SGD with Nesterov momentum and cosine warm restarts")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 for adamw, 1e-2 for sgd)")
    p.add_argument("--width", type=data.positive_int, default=32, help="encoder channels at level 1 (the paper's: 32)")
    p.add_argument("--ablation", choices=tuple(ABLATIONS), default="dis2", help="the variant of Table 2")
    p.add_argument("--p-missing-rgir", type=float, default=0.5, help="probability that a batch's missing modality is RGIR")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<date-time>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                   help="continue a run: its directory or checkpoint (default: the latest run under runs/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on with CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="data loader processes (default: 4 with CUDA, 0 on CPU)")
    args = p.parse_args(argv)
    if not 0 <= args.p_missing_rgir <= 1:
        raise DataError(f"--p-missing-rgir {args.p_missing_rgir}: must be a probability in [0, 1]")
    if args.patch % 16:
        raise DataError(f"--patch {args.patch}: must be a multiple of 16 (the encoders halve it four times)")
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
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)
        # The authors' schedule: cosine annealing with warm restarts, first cycle 10 epochs, doubling.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10 * steps_per_epoch, T_mult=2)
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
        args = argparse.Namespace(**{**checkpoint["train_args"], **given, "resume": str(path)})
        args.out = str(path.parent)
    elif not args.data:
        raise DataError("--data DIR is required (the folder with the ISPRS files; `python data.py synth DIR` makes a synthetic one)")
    args.epochs = args.epochs or 100
    return args, checkpoint


def main(argv=None):
    args, checkpoint = prepare(argv)
    device = resolve_device(args.device)
    amp_dtype = autocast_dtype(device, args.amp)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    dataset = args.dataset or data.detect_dataset(args.data)
    train_tiles = data.load_split(args.data, "train", dataset)
    val_tiles = data.load_split(args.data, "val", dataset)
    patches = data.PatchDataset(train_tiles, args.patch, args.samples_per_epoch, args.seed)
    steps_per_epoch = args.samples_per_epoch // args.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"--samples-per-epoch {args.samples_per_epoch} is smaller than --batch-size {args.batch_size}")

    out = Path(args.out or f"runs/{dataset}-{datetime.now():%Y%m%d-%H%M%S}")
    if checkpoint is None and (out / "last.pt").exists():
        raise DataError(f"--out {out}: already holds a run; continue it with --resume {out} or choose another --out")
    writable_dir(out, "--out")

    torch.manual_seed(args.seed)
    config = DIS2Config(width=args.width, pos_size=args.patch, **ABLATIONS[args.ablation])
    model = DIS2(config).to(device)
    optimizer, scheduler = make_optimizer(model, args, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    class_weights = median_frequency_weights(data.class_frequencies(train_tiles))

    state = dict(epoch=0, step_in_epoch=0, global_step=0, best_score=-1.0, epoch_sums={t: 0.0 for t in TERMS})
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_states(checkpoint["rng"])
        state = checkpoint["state"]
        if state["epoch"] >= args.epochs:
            raise DataError(f"{args.resume}: the run already finished {state['epoch']} epochs; pass --epochs N with a larger N to go on")
        print(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step_in_epoch']} of {steps_per_epoch}")
    class_weights = class_weights.to(device)

    def checkpoint_state():
        return dict(
            format=CHECKPOINT_FORMAT, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_states(), state=dict(state),
            config=config_dict(config), train_args={k: v for k, v in vars(args).items() if k != "resume"},
            data=str(Path(args.data).resolve()), dataset=dataset,
        )

    print(f"{args.ablation}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(train_tiles)} training and {len(val_tiles)} validation tiles, {device}"
          f"{f', {amp_dtype}' if amp_dtype else ''}; run directory {out}")
    stop = StopRequest()
    try:
        while state["epoch"] < args.epochs:
            stopped = train_epoch(model, optimizer, scheduler, scaler, patches, class_weights, args, state,
                                  steps_per_epoch, device, amp_dtype, workers, stop)
            if stopped:
                save_checkpoint(checkpoint_state(), out / "last.pt")
                print(f"{stop.signal}: saved {out / 'last.pt'} at epoch {state['epoch'] + 1}, step "
                      f"{state['step_in_epoch']}; continue with: python train.py --resume {out}")
                return
            results, _ = evaluate_tiles(model, val_tiles, list(SCENARIOS), args.patch, args.patch // 4,
                                        args.batch_size, device, amp_dtype, progress=False)
            model.train()
            score = float(np.mean([r["mF1"] or 0.0 for r in results.values()]))
            row = epoch_row(state, scheduler, results, score, steps_per_epoch)
            append_metrics(out / "metrics.csv", row)
            print(epoch_line(row, args.epochs))
            state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_sums={t: 0.0 for t in TERMS})
            improved = score > state["best_score"]
            if improved:
                state["best_score"] = score
            saved = checkpoint_state()
            save_checkpoint(saved, out / "last.pt")
            if improved:
                save_checkpoint(saved, out / "best.pt")
    except NonFiniteLoss as e:
        print(f"error: {e}; the last good checkpoint is {out / 'last.pt'}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop.restore()
    print(f"done: best mean mF1 {state['best_score']:.2f}; evaluate with: python evaluate.py --checkpoint {out / 'best.pt'}")


def train_epoch(model, optimizer, scheduler, scaler, patches, class_weights, args, state, steps_per_epoch,
                device, amp_dtype, workers, stop):
    """Trains the rest of the current epoch. Returns True when a stop was requested."""
    model.train()
    patches.set_epoch(state["epoch"])
    first = state["step_in_epoch"] * args.batch_size
    loader = DataLoader(Subset(patches, range(first, steps_per_epoch * args.batch_size)), batch_size=args.batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_sigint)
    bar = tqdm(loader, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", initial=state["step_in_epoch"],
               total=steps_per_epoch, unit="batch", leave=False)
    for rgir, ndsm, label in bar:
        missing = missing_modality(args.seed, state["global_step"], args.p_missing_rgir)
        rgir, ndsm, label = (x.to(device, non_blocking=True) for x in (rgir, ndsm, label))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(rgir, ndsm, scenarios=("full", f"missing_{missing}"))
        loss, terms = dis2_loss(out["full"], out[f"missing_{missing}"], label, missing, class_weights)
        if not torch.isfinite(loss):
            bad = next(name for name, value in terms.items() if not torch.isfinite(value))
            raise NonFiniteLoss(f"non-finite loss at epoch {state['epoch'] + 1}, step {state['global_step']}: "
                                f"term {bad} = {terms[bad].item()}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for name, value in terms.items():
            state["epoch_sums"][name] += value.item()
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", missing=missing)
        if stop.signal:
            return True
    return False


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
