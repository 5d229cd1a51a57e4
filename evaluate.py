"""
Evaluate a DIS2 checkpoint on whole ISPRS tiles in the paper's three
scenarios and print its Table 1 (and, with --feature-distance, its Table 3).

    python evaluate.py                                  # best.pt of the latest run under runs/, test split
    python evaluate.py --checkpoint runs/x/best.pt --missing rgir --eroded --json scores.json

Each tile is covered by overlapping windows; the softmax probabilities of
overlapping windows are averaged and every pixel of the tile is scored once.
All three scenarios come from one pass of each encoder per window (the full
scenario and the two missing ones share the Distinct encoders). The scores
come from one confusion matrix over all tiles of the split: F1 and IoU per
class, mF1 and mIoU over the paper's five classes (clutter is reported
beside them, as is usual for ISPRS), and the overall accuracy over every
labelled pixel.
"""

import argparse
import json
import os
import resource
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, ImageDraw
from torch.utils import flop_counter
from tqdm import tqdm

import data
from data import CLASSES, IGNORE_INDEX, DataError
from dis2 import DIS2, DIS2Config, SCENARIOS, STRIDE, upsample

SCORED = CLASSES[:5]  # averaged into mF1 and mIoU, as in the paper
ROW_NAMES = {"full": "Full Modality", "missing_rgir": "Missing RGIR - Only NDSM", "missing_ndsm": "Missing NDSM - Only RGIR"}
SHORT_NAMES = {s: name.split(" - ")[0] for s, name in ROW_NAMES.items()}  # for figures and scenario pairs
COLUMN_NAMES = ("Imp. Surface", "Building", "Low Veg.", "Tree", "Car")
DISTANCE_PAIRS = (("full", "missing_rgir"), ("full", "missing_ndsm"), ("missing_rgir", "missing_ndsm"))
CHECKPOINT_FORMAT = "dis2-checkpoint-3"  # 2: fusion and decoder under fusion_decoders (DIS2Config.layout); 3: running statistics per scenario
BENCHMARK_WARMUP = 2


# -----------------------------------------------------------------------------
# Devices and checkpoints (train.py uses these too)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


# --amp: the autocast dtype of each choice ("off": fp32). The same code runs
# on CPU and CUDA: torch.autocast with the device type, and for fp16 a
# GradScaler, which keeps small gradients from flushing to zero.
PRECISIONS = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision(device, amp):
    """--amp resolved on `device` to a key of PRECISIONS. Left out (None): on
    CUDA bf16 where the GPU supports it, else fp16; on CPU off (mixed
    precision pays off only with bf16 or fp16 arithmetic units, which most
    CPUs lack). True and False are what checkpoints of the earlier on/off
    flag hold."""
    cuda_without_bf16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    if amp is False or (amp is None and device.type != "cuda"):
        return "off"
    if amp is None or amp is True:
        return "fp16" if cuda_without_bf16 else "bf16"
    if amp == "bf16" and cuda_without_bf16:
        raise DataError("--amp bf16: this GPU does not support bf16; use --amp fp16")
    return amp


def autocast_dtype(device, amp):
    """The autocast dtype of --amp on `device`; None = full precision."""
    return PRECISIONS[precision(device, amp)]


AMP_HELP = ("mixed precision: bf16, fp16 (with a gradient scaler in training) or off (fp32); "
            "default: bf16 on CUDA where the GPU supports it, else fp16; off on CPU")
CHANNELS_LAST_HELP = "channels-last (NHWC) memory for the model and its inputs (default: on with CUDA, off on CPU)"


def use_channels_last(device, channels_last):
    """--channels-last resolved: left out (None), on with CUDA, where cuDNN's
    convolutions are faster in that layout, and off on CPU."""
    return device.type == "cuda" if channels_last is None else channels_last


def config_dict(config):
    return {f.name: getattr(config, f.name) for f in fields(config) if f.init}


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass --checkpoint PATH to a .pt file written by train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}); pass a .pt file written by train.py")
    if isinstance(checkpoint, dict) and str(checkpoint.get("format", "")).startswith("dis2-checkpoint-") \
            and checkpoint["format"] != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: written by another version of dis2 ({checkpoint['format']}, this one reads "
                        f"{CHECKPOINT_FORMAT}); train again with this version")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a DIS2 checkpoint (no '{CHECKPOINT_FORMAT}' marker); pass a .pt file written by train.py")
    return checkpoint


def prepared(model, device, compile_model=False, channels_last=None):
    """The model on `device` for inference, in channels-last memory (default:
    on CUDA only, see use_channels_last), optionally compiled."""
    model = model.to(device).eval()
    if use_channels_last(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def model_from_checkpoint(checkpoint, device, compile_model=False, channels_last=None):
    model = DIS2(DIS2Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return prepared(model, device, compile_model, channels_last)


def check_patch(patch):
    """Training patches and evaluation windows: the encoders halve them four times."""
    if patch % STRIDE:
        raise DataError(f"--patch {patch}: must be a multiple of {STRIDE} (the encoders halve it four times)")
    return patch


def latest_checkpoint(runs="runs", name="best.pt"):
    candidates = sorted(Path(runs).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise DataError(f"no checkpoint given and no {runs}/*/{name} found; train first or pass --checkpoint PATH")
    return candidates[-1]


# -----------------------------------------------------------------------------
# Metrics


def confusion_matrix(pred, label, num_classes=len(CLASSES)):
    """Rows: reference class, columns: predicted class; IGNORE_INDEX pixels are skipped."""
    valid = label != IGNORE_INDEX
    index = num_classes * label[valid].astype(np.int64) + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion):
    """Per-class F1 and IoU, mF1 and mIoU over the five scored classes, OA; in percent.
    A class absent from both reference and prediction has no F1 (None)."""
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 100 * 2 * tp / (2 * tp + fp + fn)
        iou = 100 * tp / (tp + fp + fn)
    scored = [CLASSES.index(c) for c in SCORED]
    value = lambda x: None if np.isnan(x) else float(x)
    return {
        "f1": {c: value(f1[i]) for i, c in enumerate(CLASSES)},
        "mF1": value(np.nanmean(f1[scored])) if not np.isnan(f1[scored]).all() else None,
        "mIoU": value(np.nanmean(iou[scored])) if not np.isnan(iou[scored]).all() else None,
        "OA": value(100 * tp.sum() / confusion.sum()) if confusion.sum() else None,
    }


# -----------------------------------------------------------------------------
# Whole-tile prediction


@torch.inference_mode()
def predict_tile(model, tile, scenarios, window, overlap, batch_size, device, amp_dtype, distances=None,
                 channels_last=None):
    """Class maps (H, W) uint8 for each scenario. Windows are batched; each
    window runs every encoder once for all scenarios. With `distances` (a dict
    pair -> [sum, count]), adds the L2 distance between the penultimate
    features Z of each pair of scenarios, averaged over the window's pixels.
    `channels_last` is the memory format of the model (see use_channels_last);
    the windows take it too, which spares the first convolution a copy."""
    H, W = tile.label.shape
    rgir, ndsm = data.pad_to_window(tile.rgir, window), data.pad_to_window(tile.ndsm, window)
    starts = data.sliding_windows(*ndsm.shape[:2], window, overlap)
    K = len(CLASSES)
    memory_format = torch.channels_last if use_channels_last(device, channels_last) else torch.contiguous_format
    # Summed softmax probabilities: their argmax is that of the average over windows.
    probs = {s: torch.zeros(K, *ndsm.shape[:2], device=device) for s in scenarios}
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        r, n = data.normalise(
            np.stack([rgir[y : y + window, x : x + window] for y, x in batch]),
            np.stack([ndsm[y : y + window, x : x + window] for y, x in batch]),
        )
        r, n = (x.to(device, non_blocking=True).contiguous(memory_format=memory_format) for x in (r, n))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(r, n, scenarios=scenarios)
        for s, out in outputs.items():
            p = out.logits.float().softmax(dim=1)
            for (y, x), p_window in zip(batch, p):
                probs[s][:, y : y + window, x : x + window] += p_window
        for a, b in distances or {}:
            distance = (outputs[a].z.float() - outputs[b].z.float()).norm(dim=1).mean(dim=(1, 2))  # (B,)
            distances[a, b][0] += distance.sum().item()
            distances[a, b][1] += len(batch)
    return {s: p[:, :H, :W].argmax(0).to(torch.uint8).cpu().numpy() for s, p in probs.items()}


def evaluate_tiles(model, tiles, scenarios, window, overlap, batch_size, device, amp_dtype,
                   eroded=False, feature_distance=False, save_dir=None, progress=True, channels_last=None):
    """Scores each scenario over all tiles from one confusion matrix per scenario.
    Returns (scores per scenario, feature distances per pair or None)."""
    model.eval()  # batch norm with its running statistics; train.py switches back after validation
    confusion = {s: np.zeros((len(CLASSES),) * 2, np.int64) for s in scenarios}
    distances = {pair: [0.0, 0] for pair in DISTANCE_PAIRS if set(pair) <= set(scenarios)} if feature_distance else None
    for tile in tqdm(tiles, desc="tiles", unit="tile", disable=not progress):
        label = tile.label_eroded if eroded else tile.label
        predictions = predict_tile(model, tile, scenarios, window, overlap, batch_size, device, amp_dtype, distances,
                                   channels_last)
        for s, pred in predictions.items():
            confusion[s] += confusion_matrix(pred, label)
            if save_dir is not None:
                Image.fromarray(data.labels_to_rgb(pred)).save(Path(save_dir) / f"{tile.name}_{s}.png")
    mean_distance = {pair: total / max(count, 1) for pair, (total, count) in distances.items()} if distances else None
    return {s: scores(c) for s, c in confusion.items()}, mean_distance


# -----------------------------------------------------------------------------
# Tables


def fmt(x, width=8):
    return f"{'-':>{width}}" if x is None else f"{x:{width}.2f}"


def table(results):
    """The layout of the paper's Table 1: a row per scenario, the five class F1
    scores, mF1 and mIoU; then OA and the clutter F1 (not in the means)."""
    header = f"{'Scenario':<26}" + "".join(f"{c:>13}" for c in COLUMN_NAMES) + f"{'mF1':>8}{'mIoU':>8}{'OA':>8} |{'Clutter':>8}"
    lines = [header, "-" * len(header)]
    for s, r in results.items():
        cells = "".join(fmt(r["f1"][c], 13) for c in SCORED)
        lines.append(f"{ROW_NAMES[s]:<26}{cells}{fmt(r['mF1'])}{fmt(r['mIoU'])}{fmt(r['OA'])} |{fmt(r['f1']['clutter'])}")
    return "\n".join(lines)


def distances_by_name(distances):
    """{(a, b): d} -> {"a_vs_b": d}, the JSON form of Table 3."""
    return {f"{a}_vs_{b}": d for (a, b), d in distances.items()}


def distance_table(distances):
    """The layout of the paper's Table 3: mean L2 distance between the
    penultimate features Z of two scenarios, over all windows."""
    lines = [f"{'Scenario pair':<36}{'L2 distance of Z':>18}"]
    for (a, b), d in distances.items():
        lines.append(f"{SHORT_NAMES[a] + ' vs ' + SHORT_NAMES[b]:<36}{d:>18.4f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# The reproduction's tables (markdown) and figures (PNG); train.py --reproduce


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x):
    return "-" if x is None else f"{x:.2f}"


def score_rows(label, result):
    return [label, *(pct(result["f1"][c]) for c in SCORED), pct(result["mF1"]), pct(result["mIoU"]), pct(result["OA"])]


SCORE_HEADER = ["", *COLUMN_NAMES, "mF1", "mIoU", "OA"]


VARIANT_NAMES = {"hf": "Hierarchical Fusion (HF)", "hf+cw": "HF + Classwise (CW)", "hf+dlkd": "HF + DLKD",
                 "dis2": "HF + CW + DLKD (DIS2)", "dis2-per-scenario": "DIS2, per-scenario layout (authors')"}
CLAIM_MARGIN = 2  # a difference counts only beyond this many standard errors of its mean


def spread(values):
    """Mean and sample standard deviation (None for a single value) of a list of numbers."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def mean_std(values, digits=2):
    """'mean ± std' over seeds, or the single value, or '-' when there is none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = spread(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_difference(a, b):
    """a - b over the seeds both have ({seed: value} each): (mean, standard error
    of the mean or None for one pair, number of pairs), or None without pairs."""
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if not seeds:
        return None
    mean, std = spread([a[s] - b[s] for s in seeds])
    return mean, (None if std is None else std / np.sqrt(len(seeds))), len(seeds)


def verdict(difference):
    """'above' when the mean paired difference exceeds CLAIM_MARGIN standard
    errors, 'below' when it is that far under 0, else 'not resolved'."""
    if difference is None or difference[1] is None:
        return "not resolved"
    mean, se, _ = difference
    return "above" if mean > CLAIM_MARGIN * se else "below" if mean < -CLAIM_MARGIN * se else "not resolved"


def show_difference(difference, digits=2):
    if difference is None:
        return "-"
    mean, se, n = difference
    return f"{mean:+.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "") + f" (n={n})"


def per_seed(runs, scenario, key):
    """{seed: score} of one variant's runs; key is "mF1", "mIoU", "OA" or a class name (its F1)."""
    get = lambda r: r[key] if key in r else r["f1"][key]
    return {seed: get(run["scores"][scenario]) for seed, run in runs.items()}


def distance_per_seed(runs, pair):
    return {seed: run["feature_distance"][f"{pair[0]}_vs_{pair[1]}"] for seed, run in runs.items()}


def claim_outcome(differences, direction):
    """"holds" when every paired difference is resolved in `direction` ("above"
    or "below" 0), "does not hold" when any is resolved the other way, else "not resolved"."""
    verdicts = {verdict(d) for d in differences}
    opposite = "below" if direction == "above" else "above"
    return "holds" if verdicts == {direction} else "does not hold" if opposite in verdicts else "not resolved"


def claims(results):
    """The paper's three claims, each (statement, outcome, evidence) with outcome
    "holds", "does not hold" (the opposite is resolved) or "not resolved".
    `results`: variant -> seed -> {"scores": ..., "feature_distance": ...}."""
    found = []
    missing = ("missing_rgir", "missing_ndsm")
    for variant in ("dis2", "dis2-per-scenario"):
        if variant not in results or "hf" not in results:
            continue
        gains = {s: paired_difference(per_seed(results[variant], s, "mF1"), per_seed(results["hf"], s, "mF1"))
                 for s in missing}
        found.append((f"{VARIANT_NAMES[variant]} beats HF in both missing scenarios (paired mF1 difference)",
                      claim_outcome(gains.values(), "above"),
                      "; ".join(f"{SHORT_NAMES[s]}: {show_difference(d)}" for s, d in gains.items())))
    for variant in ("dis2", "dis2-per-scenario"):
        if variant not in results or "hf" not in results:
            continue
        shrink = {pair: paired_difference(distance_per_seed(results[variant], pair), distance_per_seed(results["hf"], pair))
                  for pair in DISTANCE_PAIRS[:2]}
        found.append((f"distillation shrinks the full-vs-missing distance of Z ({VARIANT_NAMES[variant]} minus HF < 0)",
                      claim_outcome(shrink.values(), "below"),
                      "; ".join(f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}: {show_difference(d, 4)}" for (a, b), d in shrink.items())))
    for variant in ("dis2", "dis2-per-scenario", "hf"):
        if variant not in results:
            continue
        rgir = per_seed(results[variant], "missing_rgir", "mF1")
        margins = {s: paired_difference(per_seed(results[variant], s, "mF1"), rgir) for s in ("full", "missing_ndsm")}
        found.append((f"missing RGIR is the hardest scenario for {VARIANT_NAMES[variant]} (the others' mF1 minus missing RGIR's > 0)",
                      claim_outcome(margins.values(), "above"),
                      "; ".join(f"{SHORT_NAMES[s]}: {show_difference(d)}" for s, d in margins.items())))
    return found


def tables_markdown(results, training, title):
    """Analogues of the paper's Tables 1-3 over seeds, paired differences
    against HF, the training losses and the outcome of the claims.
    `results`: variant -> seed -> {"scores": scenario -> scores, "feature_distance": pair name -> d};
    `training`: variant -> seed -> (final training segmentation loss, its relative drop over the last quarter)."""
    seeds = lambda v: f"{len(results[v])} seed{'s' if len(results[v]) > 1 else ''}"
    row = lambda label, runs, s: [label, *(mean_std(per_seed(runs, s, k).values()) for k in (*SCORED, "mF1", "mIoU", "OA"))]
    parts = [f"# {title}", "",
             f"Scores are the mean ± standard deviation over seeds. A difference counts only where its mean over "
             f"the paired seeds is more than {CLAIM_MARGIN} standard errors from 0.", ""]
    if "dis2" in results:
        parts += [f"## Table 1 analogue: DIS2, F1 per class, mF1, mIoU (%), {seeds('dis2')}", "",
                  markdown_table(SCORE_HEADER, [row(ROW_NAMES[s], results["dis2"], s) for s in SCENARIOS]), ""]
    rows = []
    for s in SCENARIOS:
        rows.append([f"**{ROW_NAMES[s]}**", *[""] * (len(SCORE_HEADER) - 1)])
        rows += [row(f"{VARIANT_NAMES[v]} ({seeds(v)})", runs, s) for v, runs in results.items()]
    parts += ["## Table 2 analogue: the ablation (F1 %)", "", markdown_table(SCORE_HEADER, rows), ""]

    def paired_row(s, v, baseline, outcomes):
        d = paired_difference(per_seed(results[v], s, "mF1"), per_seed(results[baseline], s, "mF1"))
        class_means = [paired_difference(per_seed(results[v], s, c), per_seed(results[baseline], s, c)) for c in SCORED]
        per_class = ["-" if c is None else f"{c[0]:+.2f}" for c in class_means]
        return [ROW_NAMES[s], VARIANT_NAMES[v], show_difference(d), outcomes.get(verdict(d), "not resolved"), *per_class]

    delta_header = [f"Δ {c}" for c in COLUMN_NAMES]
    if "hf" in results and len(results) > 1:
        rows = [paired_row(s, v, "hf", {"above": "better", "below": "worse"}) for s in SCENARIOS for v in results if v != "hf"]
        parts += ["## Paired differences against HF (same seeds): mF1 mean ± standard error, and the mean per class", "",
                  markdown_table(["Scenario", "Variant", "Δ mF1", "vs HF", *delta_header], rows), ""]
    if "dis2" in results and "dis2-per-scenario" in results:
        rows = [paired_row(s, "dis2-per-scenario", "dis2", {"above": "per-scenario better", "below": "shared better"})
                for s in SCENARIOS]
        parts += ["## The two DIS2 layouts: per-scenario minus shared (same seeds)", "",
                  markdown_table(["Scenario", "Variant", "Δ mF1", "outcome", *delta_header], rows), ""]
    rows = []
    for a, b in DISTANCE_PAIRS:
        for v, runs in results.items():
            d = paired_difference(distance_per_seed(runs, (a, b)), distance_per_seed(results["hf"], (a, b))) \
                if "hf" in results and v != "hf" else None
            rows.append([f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}", VARIANT_NAMES[v],
                         mean_std(distance_per_seed(runs, (a, b)).values(), 4), show_difference(d, 4)])
    parts += ["## Table 3 analogue: mean L2 distance between the penultimate features Z of two scenarios", "",
              markdown_table(["Scenario pair", "Variant", "distance", "minus HF (paired)"], rows), ""]
    rows = [[VARIANT_NAMES[v], mean_std([loss for loss, _ in training[v].values()], 3),
             mean_std([100 * drop for _, drop in training[v].values()], 1)] for v in results if v in training]
    parts += ["## Training: has the loss flattened?", "",
              "The training segmentation loss (full plus missing scenario) of the last epoch, and how much it fell "
              "over the last quarter of the epochs (figure_training_loss.png shows the curves).", "",
              markdown_table(["Variant", "final loss", "drop over the last quarter (%)"], rows), "",
              "## The paper's claims on this benchmark", ""]
    parts += [f"- {statement}: **{outcome}** ({evidence})" for statement, outcome, evidence in claims(results)]
    return "\n".join(parts) + "\n"


VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def colormap(values):
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 on a viridis-like ramp."""
    x = np.clip(values, 0, 1) * (len(VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(VIRIDIS) - 2)
    f = (x - i)[..., None]
    return ((1 - f) * VIRIDIS[i] + f * VIRIDIS[i + 1]).astype(np.uint8)


def stretch(x):
    x = x.astype(np.float32)
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-8)


def show_ndsm(ndsm):
    return np.repeat((255 * np.clip(ndsm / max(np.percentile(ndsm, 99.5), 1), 0, 1)).astype(np.uint8)[..., None], 3, -1)


def grid_image(cells, row_labels, column_labels, cell):
    """Pastes (H, W, 3) uint8 arrays, resized to `cell` pixels high, into a labelled grid."""
    resized = [[Image.fromarray(c).resize((round(cell * c.shape[1] / c.shape[0]), cell), Image.NEAREST) for c in row]
               for row in cells]
    widths = [max(row[j].width for row in resized) for j in range(len(resized[0]))]
    left, top, gap = 150, 28, 6
    image = Image.new("RGB", (left + sum(widths) + gap * len(widths), top + (cell + gap) * len(resized)), "white")
    draw = ImageDraw.Draw(image)
    x = left
    for j, label in enumerate(column_labels):
        draw.text((x, 8), label, fill="black")
        for i, row in enumerate(resized):
            image.paste(row[j], (x, top + i * (cell + gap)))
        x += widths[j] + gap
    for i, label in enumerate(row_labels):
        draw.text((6, top + i * (cell + gap) + cell // 2 - 6), label, fill="black")
    return image


def figure_predictions(tiles, predictions, path, cell=200):
    """Figure 3 analogue: per tile, IRRG, NDSM, reference and the predictions of
    each variant in each scenario. `predictions`: variant -> scenario -> tile name -> map."""
    columns, rows = ["IRRG (false colour)", "NDSM", "reference"], []
    for variant in predictions:
        columns += [f"{variant.upper()} {s.replace('missing_', 'no ')}" for s in SCENARIOS]
    for tile in tiles:
        row = [tile.rgir, show_ndsm(tile.ndsm), data.labels_to_rgb(tile.label)]
        row += [data.labels_to_rgb(predictions[v][s][tile.name]) for v in predictions for s in SCENARIOS]
        rows.append(row)
    grid_image(rows, [t.name for t in tiles], columns, cell).save(path)


LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def figure_training_loss(curves, path, size=(760, 420)):
    """The training segmentation loss against the step, one colour per
    variant and one line per seed. `curves`: variant -> seed -> [(step, loss)]."""
    W, H = size
    left, right, top, bottom = 60, 200, 20, 40
    points = [p for runs in curves.values() for curve in runs.values() for p in curve]
    max_step = max(s for s, _ in points)
    low, high = min(l for _, l in points), max(l for _, l in points)
    high = high if high > low else low + 1
    to_xy = lambda s, l: (left + (W - left - right) * s / max_step, top + (H - top - bottom) * (high - l) / (high - low))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for frac in (0, 0.5, 1):
        loss = low + frac * (high - low)
        draw.text((4, to_xy(0, loss)[1] - 6), f"{loss:.3f}", fill="black")
        draw.text((to_xy(frac * max_step, low)[0] - 10, H - bottom + 6), f"{round(frac * max_step)}", fill="black")
    draw.text((left + 4, H - 16), "training step; y: L_seg(full) + L_seg(missing), per epoch", fill="black")
    for i, (variant, runs) in enumerate(curves.items()):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        for curve in runs.values():
            if len(curve) > 1:
                draw.line([to_xy(s, l) for s, l in curve], fill=colour, width=2)
            else:
                x, y = to_xy(*curve[0])
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((W - right + 10, top + 16 * i), f"{variant} ({len(runs)})", fill=colour)
    image.save(path)


@torch.inference_mode()
def attention_and_queries(model, tile, window, device):
    """alpha_k (K, h, w) and the class descriptors sum_p alpha_k(p) F_L(p) (K, C)
    of each scenario, for the top-left window of a tile."""
    r, n = data.normalise(data.pad_to_window(tile.rgir, window)[None, :window, :window],
                          data.pad_to_window(tile.ndsm, window)[None, :window, :window])
    captured = []  # M of each scenario, in the order the scenarios run
    hooks = [stack.classwise_attention.register_forward_hook(lambda module, inputs, output: captured.append(output[0]))
             for stack in model.fusion_decoders.values()]
    outputs = model.eval()(r.to(device), n.to(device), scenarios=list(SCENARIOS))
    for hook in hooks:
        hook.remove()
    K, C = model.config.num_classes, model.config.widths[-1]
    m = [x.view(K, C, -1).mean(-1) for x in captured]  # mean_p of M_k = h w alpha_k F_L: sum_p alpha_k F_L
    return {s: (outputs[s].attention[0].float().cpu().numpy(), m[i].float().cpu().numpy()) for i, s in enumerate(SCENARIOS)}


def figure_attention(model, tile, window, device, path, cell=160):
    """Figure 6 analogue: the classwise attention maps alpha_k of each scenario over the input window."""
    maps = attention_and_queries(model, tile, window, device)
    rgir = data.pad_to_window(tile.rgir, window)[:window, :window]
    rows = []
    for s in SCENARIOS:
        row = [rgir]
        for alpha in maps[s][0]:
            heat = np.asarray(Image.fromarray(colormap(stretch(alpha))).resize((window, window), Image.BILINEAR))
            row.append((0.55 * heat + 0.45 * rgir).astype(np.uint8))
        rows.append(row)
    columns = ["IRRG", *(c.replace("_", " ") for c in CLASSES)]
    grid_image(rows, [SHORT_NAMES[s] for s in SCENARIOS], columns, cell).save(path)


def figure_queries(model, tile, window, device, path, cell=150):
    """Figure 4 analogue: the learnable class queries q_k of Eq. 9 (one set
    shared by all scenarios, or one per scenario in the per-scenario layout)
    and, per scenario, what they retrieve from F_L, sum_p alpha_k(p) F_L(p):
    a (K, C) heatmap each, one row per class."""
    maps = attention_and_queries(model, tile, window, device)
    queries = {name: stack.classwise_attention.queries.detach().float().cpu().numpy()
               for name, stack in model.fusion_decoders.items()}
    heat = lambda x: np.repeat(np.repeat(colormap(stretch(x)), 24, axis=0), 2, axis=1)
    cells = [[*(heat(q) for q in queries.values()), *(heat(maps[s][1]) for s in SCENARIOS)]]
    columns = [f"queries q_k{'' if name == 'shared' else ', ' + SHORT_NAMES[name]}" for name in queries]
    columns += [f"retrieved, {SHORT_NAMES[s]}" for s in SCENARIOS]
    grid_image(cells, ["classes 1-6 (rows)"], columns, cell).save(path)


# -----------------------------------------------------------------------------
# Benchmarks (train.py --benchmark uses these too)


def measure(step, images_per_step, device, warmup, repeats):
    """Runs `step` `warmup` times, then times `repeats` calls. Peak memory is
    the process's peak resident set on CPU, the allocator's peak on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    median = float(np.median(seconds))
    return dict(step_s_median=median, step_s_min=min(seconds), step_s_max=max(seconds),
                images_per_s=images_per_step / median, peak_mem_mb=peak, repeats=repeats)


# FlopCounterMode knows the attention kernels of CUDA but not the one that
# F.scaled_dot_product_attention runs on CPU; the same formulas count it there.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(grad_out, q, k, v),
}


def count_flops(step):
    """Runs `step` once and returns its floating-point operations as
    FlopCounterMode counts them: matrix products, convolutions and attention
    (forward and backward), a multiply-add being two; element-wise work,
    normalisation, pooling and resampling are left out."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(device, dtype=torch.float32):
    """GFLOP/s of a large square matrix product: what the machine's matrix
    units deliver, the yardstick for a step's achieved GFLOP/s."""
    n = 4096 if device.type == "cuda" else 2048  # large enough for the peak rate; on CPU about 0.1 s a product
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = measure(lambda: torch.mm(a, b), 1, device, BENCHMARK_WARMUP, repeats=5)["step_s_median"]
    return 2 * n**3 / seconds / 1e9


def report_benchmark(what, result, flops, args, device, amp_dtype, **extra):
    """Two readable lines, then the result as one JSON object (the last line
    printed): timing and memory from measure(), GFLOP per step (`flops`,
    from count_flops), the achieved GFLOP/s and the matrix-product rate of
    the machine in fp32 and in the autocast dtype, measured after the steps.
    `args.channels_last` is the resolved setting (see use_channels_last)."""
    precision_name = str(amp_dtype).replace("torch.", "") if amp_dtype else None
    rates = {"mm_gflop_s_float32": matmul_rate(device)}
    if amp_dtype:
        rates[f"mm_gflop_s_{precision_name}"] = matmul_rate(device, amp_dtype)
    result = dict(what=what, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  threads=torch.get_num_threads(), patch=args.patch, batch_size=args.batch_size,
                  amp=precision_name, channels_last=args.channels_last,
                  compile=args.compile, torch=torch.__version__, **result, gflop_per_step=flops / 1e9,
                  gflop_s=flops / 1e9 / result["step_s_median"], **rates, **extra)
    print(f"{what}: median {result['step_s_median']:.3f} s (min {result['step_s_min']:.3f}, max "
          f"{result['step_s_max']:.3f}, {result['repeats']} steps), {result['images_per_s']:.2f} images/s, "
          f"peak memory {result['peak_mem_mb']:.0f} MB")
    print(f"{what}: {result['gflop_per_step']:.1f} GFLOP per step, {result['gflop_s']:.1f} GFLOP/s achieved; "
          "matrix product " + ", ".join(f"{r:.0f} GFLOP/s in {k.rsplit('_', 1)[1]}" for k, r in rates.items()))
    print(json.dumps(result))


def benchmark(args, device, amp_dtype):
    """One full-modality forward pass on random inputs, as evaluation runs it."""
    torch.manual_seed(0)
    args.patch = args.patch or 512
    net = prepared(DIS2(DIS2Config(pos_size=args.patch)), device, channels_last=args.channels_last)
    model = torch.compile(net) if args.compile else net
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    B, p = args.batch_size, args.patch
    rgir = torch.randn(B, 3, p, p, device=device).contiguous(memory_format=memory_format)
    ndsm = torch.randn(B, 1, p, p, device=device).contiguous(memory_format=memory_format)

    @torch.inference_mode()
    def step(model=model):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(rgir, ndsm)

    flops = count_flops(lambda: step(net))  # net, not model: a compiled graph hides its operations from the counter
    report_benchmark("inference", measure(step, B, device, BENCHMARK_WARMUP, args.repeats), flops, args, device, amp_dtype)


# -----------------------------------------------------------------------------
# Prediction on new imagery: python evaluate.py --predict OUT --rgir ORTHO --ndsm NDSM (docs/predict.md)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STRIP_ROWS = 64  # rows per TIFF strip of the outputs, so that a GIS reads part of a large map without all of it


def window_outputs(model, rgir, ndsm, batch, window, device, amp_dtype, attention, memory_format):
    """(B, K, window, window) softmax probabilities of the windows at `batch` (top-left corners)
    from the modalities given (None: missing). With `attention`, K more channels: alpha_k of
    Eq. 9 upsampled and scaled by h*w, so that 1 means uniform attention at any window size."""
    cut = lambda image: None if image is None else np.stack([image[y : y + window, x : x + window] for y, x in batch])
    r, n = cut(rgir), cut(ndsm)
    # data.normalise takes both modalities: a missing one goes in as zeros and is dropped again
    normalised = data.normalise(np.zeros((*n.shape, 3), np.uint8) if r is None else r,
                                np.zeros(r.shape[:-1], np.uint8) if n is None else n)
    r, n = (None if x is None else t.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            for x, t in zip((r, n), normalised))
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(r, n)  # model(rgir, None), model(None, ndsm): the missing-modality scenarios
    probabilities = out.logits.float().softmax(dim=1)
    if not attention:
        return probabilities
    alpha = out.attention.float()  # (B, K, window/16, window/16)
    return torch.cat([probabilities, alpha.shape[-2] * alpha.shape[-1] * upsample(alpha, (window, window))], dim=1)


def coverage(starts, size, window, device):
    """(size,) how many of the windows starting at `starts` cover each position along one axis."""
    count = torch.zeros(size, device=device)
    for start in set(starts):
        count[start : start + window] += 1
    return count


@torch.inference_mode()
def predict_strips(model, rgir, ndsm, window, overlap, batch_size, device, amp_dtype,
                   probabilities=False, attention=False, channels_last=None):
    """Predicts one image from rgir (H, W, 3) and/or ndsm (H, W) uint8 (None: that modality is
    missing) and yields it top to bottom in strips of rows: dicts with "labels", (h, W) uint8
    class ids, and if asked "probabilities" and "attention", (h, W, K) float32 means over the
    windows covering each pixel. Windows, batches and summation are predict_tile's, so the
    labels are the same; but only the rows that windows still to come overlap are held
    (K x about window + batch rows x W floats), never K x H x W. `channels_last`: as predict_tile's."""
    H, W = (rgir if rgir is not None else ndsm).shape[:2]
    memory_format = torch.channels_last if use_channels_last(device, channels_last) else torch.contiguous_format
    rgir, ndsm = (None if x is None else data.pad_to_window(x, window) for x in (rgir, ndsm))
    padded_h, padded_w = (rgir if rgir is not None else ndsm).shape[:2]
    starts = data.sliding_windows(padded_h, padded_w, window, overlap)
    K = model.config.num_classes
    ys, xs = zip(*starts)
    count_y, count_x = coverage(ys, padded_h, window, device), coverage(xs, padded_w, window, device)
    held, top = torch.zeros(K * (1 + attention), 0, padded_w, device=device), 0  # sums for rows top, top + 1, ...
    for i in tqdm(range(0, len(starts), batch_size), desc="windows", unit="batch", leave=False, disable=None):
        batch = starts[i : i + batch_size]
        new_rows = batch[-1][0] + window - top - held.shape[1]
        if new_rows > 0:
            held = torch.cat([held, held.new_zeros(held.shape[0], new_rows, padded_w)], dim=1)
        values = window_outputs(model, rgir, ndsm, batch, window, device, amp_dtype, attention, memory_format)
        for (y, x), window_values in zip(batch, values):
            held[:, y - top : y - top + window, x : x + window] += window_values
        done = starts[i + batch_size][0] if i + batch_size < len(starts) else padded_h  # no later window reaches above
        if done > top:
            sums = held[:, : min(done, H) - top, :W]
            strip = {"labels": sums[:K].argmax(0).to(torch.uint8).cpu().numpy()}
            if probabilities or attention:
                means = (sums / (count_y[top : top + sums.shape[1], None] * count_x[:W])).movedim(0, -1).cpu().numpy()
                if probabilities:
                    strip["probabilities"] = means[..., :K]
                if attention:
                    strip["attention"] = means[..., K:]
            yield strip
            held, top = held[:, done - top :], done


def images_in(folder, flag):
    """File name without suffix -> path, for the images directly in a folder."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"{flag} {folder}: {found[path.stem].name} and {path.name} have the same name; keep one of them")
        found[path.stem] = path
    if not found:
        raise DataError(f"{flag} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return found


def prediction_pairs(rgir, ndsm):
    """(orthophoto, NDSM) paths to predict, None for a missing modality, from --rgir and
    --ndsm: two files, or two folders whose files are matched by name without suffix."""
    given = {flag: Path(path) for flag, path in (("--rgir", rgir), ("--ndsm", ndsm)) if path}
    if not given:
        raise DataError("--predict needs --rgir ORTHOPHOTO and/or --ndsm NDSM (files or folders); "
                        "leave out only the modality that is missing")
    for flag, path in given.items():
        if not path.exists():
            raise DataError(f"{flag} {path}: not found")
    if len({path.is_dir() for path in given.values()}) > 1:
        raise DataError("--rgir and --ndsm must both be files or both be folders")
    if not next(iter(given.values())).is_dir():
        return [(given.get("--rgir"), given.get("--ndsm"))]
    found = {flag: images_in(folder, flag) for flag, folder in given.items()}
    if "--ndsm" not in found:
        return [(path, None) for path in found["--rgir"].values()]
    if "--rgir" not in found:
        return [(None, path) for path in found["--ndsm"].values()]
    orthophotos, ndsms = found["--rgir"], found["--ndsm"]
    unmatched = [path for name, path in orthophotos.items() if name not in ndsms]
    if unmatched:
        raise DataError(f"{unmatched[0]}: no NDSM of the same name in {given['--ndsm']} ({len(unmatched)} orthophoto(s) "
                        "unmatched); name each NDSM as its orthophoto, or leave out --ndsm to predict without it")
    unused = sorted(set(ndsms) - set(orthophotos))
    if unused:
        print(f"notice: {len(unused)} NDSM file(s) in {given['--ndsm']} have no orthophoto of the same name, not used: "
              + " ".join(ndsms[name].name for name in unused))
    return [(path, ndsms[name]) for name, path in orthophotos.items()]


def read_pair(rgir_path, ndsm_path):
    """The checked pixels of one pair (None for a missing modality) and the GeoTIFF tags of
    its prediction: the orthophoto's, or the NDSM's if the orthophoto has none."""
    rgir, rgir_tags = data.read_orthophoto(rgir_path) if rgir_path else (None, [])
    ndsm, ndsm_tags = data.read_height_model(ndsm_path) if ndsm_path else (None, [])
    if rgir is not None and ndsm is not None and ndsm.shape != rgir.shape[:2]:
        raise DataError(f"{ndsm_path}: size {ndsm.shape[0]} x {ndsm.shape[1]} differs from {rgir_path} "
                        f"({rgir.shape[0]} x {rgir.shape[1]}); the orthophoto and the NDSM must cover the same pixels")
    return rgir, ndsm, rgir_tags or ndsm_tags


class StripWriter:
    """A GeoTIFF written strip by strip, top to bottom; uncompressed, so every strip goes
    straight to its place in the file. It is written under a temporary name in the output
    folder and renamed when complete (`commit`), so a failed run leaves no partial file."""

    def __init__(self, path, shape, dtype, photometric, tags):
        self.path, self.temporary = path, path.with_name(f".{path.name}.partial")
        tifffile.imwrite(self.temporary, shape=shape, dtype=dtype, photometric=photometric, planarconfig="contig",
                         rowsperstrip=STRIP_ROWS, extratags=tags, metadata=None)  # the header, room for the pixels
        with tifffile.TiffFile(self.temporary) as tiff:
            offset = tiff.pages.first.dataoffsets[0]
        self.file = open(self.temporary, "r+b")
        self.file.seek(offset)

    def write(self, rows):
        self.file.write(np.ascontiguousarray(rows).tobytes())

    def commit(self):
        self.file.close()
        os.replace(self.temporary, self.path)

    def discard(self):
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def stored(key, values, colour):
    """A strip's values as written: class ids or palette colours; probabilities as uint8 0-255."""
    if key == "labels":
        return data.labels_to_rgb(values) if colour else values
    return np.rint(255 * values).astype(np.uint8) if key == "probabilities" else values


def predict_file(model, rgir_path, ndsm_path, out_dir, args, window, overlap, device, amp_dtype):
    """OUT/<name>_labels.tif, and _probabilities.tif and _attention.tif if asked, for one input pair."""
    rgir, ndsm, tags = read_pair(rgir_path, ndsm_path)
    H, W = (rgir if rgir is not None else ndsm).shape[:2]
    name, K = (rgir_path or ndsm_path).stem, model.config.num_classes
    formats = {"labels": ((H, W, 3), np.uint8, "rgb") if args.colour else ((H, W), np.uint8, "minisblack")}
    if args.probabilities:
        formats["probabilities"] = ((H, W, K), np.uint8, "minisblack")
    if args.attention:
        formats["attention"] = ((H, W, K), np.float32, "minisblack")
    writers = {}
    try:
        for key, (shape, dtype, photometric) in formats.items():
            writers[key] = StripWriter(out_dir / f"{name}_{key}.tif", shape, dtype, photometric, tags)
        for strip in predict_strips(model, rgir, ndsm, window, overlap, args.batch_size, device, amp_dtype,
                                    args.probabilities, args.attention, args.channels_last):
            for key, writer in writers.items():
                writer.write(stored(key, strip[key], args.colour))
        for writer in writers.values():
            writer.commit()
    except OSError as error:
        raise DataError(f"--predict {out_dir}: cannot write the prediction of {name} ({error.strerror or error}); "
                        "free some space or choose another folder") from error
    finally:
        for writer in writers.values():
            writer.discard()


def predict(args, checkpoint, window, overlap, device, amp_dtype):
    """--predict: label maps of new imagery, one per orthophoto/NDSM pair."""
    if not args.predict:
        raise DataError("--rgir and --ndsm are the inputs of --predict OUT; add --predict with an output folder")
    pairs = prediction_pairs(args.rgir, args.ndsm)
    model = model_from_checkpoint(checkpoint, device, args.compile, args.channels_last)
    if args.attention and not model.config.classwise:
        raise DataError("--attention: this checkpoint's model has no classwise attention (an HF or HF+DLKD variant); "
                        "drop --attention")
    for pair in pairs:  # every input is read and checked before anything is written
        read_pair(*pair)
    out_dir = writable_dir(args.predict, "--predict")
    start = time.perf_counter()
    for rgir_path, ndsm_path in tqdm(pairs, desc="predicting", unit="image", disable=None):
        predict_file(model, rgir_path, ndsm_path, out_dir, args, window, overlap, device, amp_dtype)
    print(f"wrote the predictions of {len(pairs)} image(s) to {out_dir} in {time.perf_counter() - start:.1f} s")


# -----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = data.ArgumentParser(description="Evaluate a DIS2 checkpoint in the paper's scenarios (Table 1).")
    p.add_argument("--checkpoint", help="checkpoint file (default: best.pt of the most recent run under runs/)")
    p.add_argument("--data", help="ISPRS data directory (default: the one stored in the checkpoint)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--missing", choices=("none", "rgir", "ndsm", "all"), default="all",
                   help="the scenario: none = full modality, rgir = RGIR missing (NDSM only), ndsm = NDSM missing, all = the three")
    p.add_argument("--eroded", action="store_true", help="score against the eroded labels (*_noBoundary.tif), the ISPRS convention")
    p.add_argument("--save-predictions", metavar="DIR", help="write one colour PNG per tile and scenario")
    p.add_argument("--json", metavar="PATH", help="write the scores as JSON")
    p.add_argument("--feature-distance", action="store_true",
                   help="also report the paper's Table 3: L2 distance between the features Z of the scenarios")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=tuple(PRECISIONS), help=AMP_HELP)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    p.add_argument("--batch-size", type=data.positive_int, default=4, help="windows per forward pass")
    p.add_argument("--patch", type=data.positive_int, help="side of the sliding windows, a multiple of 16 (default: the training patch)")
    p.add_argument("--overlap", type=int, help="overlap of adjacent windows in pixels (default: a quarter window)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--benchmark", action="store_true",
                   help="time full-modality forward passes of the default model on random inputs at "
                        "--patch (default 512)/--batch-size/--device, count their GFLOP and exit (docs/speed.md)")
    p.add_argument("--repeats", type=data.positive_int, default=5, help="timed steps of --benchmark")
    new = p.add_argument_group("prediction on new imagery (docs/predict.md)")
    new.add_argument("--predict", metavar="OUT", help="write a label GeoTIFF per input into the folder OUT, "
                     "<name>_labels.tif, georeferenced as the input")
    new.add_argument("--rgir", metavar="PATH", help="orthophoto: 8-bit 3-band IRRG or 4-band RGBIR GeoTIFF/PNG, "
                     "or a folder of them; leave out if missing")
    new.add_argument("--ndsm", metavar="PATH", help="NDSM: 8-bit or float metres, or a folder of them named as the "
                     "orthophotos; leave out if missing")
    new.add_argument("--colour", action="store_true", help="labels in the ISPRS palette colours instead of class ids")
    new.add_argument("--probabilities", action="store_true",
                     help="also write <name>_probabilities.tif: per-class probabilities, uint8 0-255, a band per class")
    new.add_argument("--attention", action="store_true",
                     help="also write <name>_attention.tif: the classwise attention maps alpha_k (Eq. 9) upsampled, "
                          "float32, a band per class, 1 = uniform")
    return p.parse_args(argv)


def chosen_scenarios(missing):
    return {"all": list(SCENARIOS), "none": ["full"], "rgir": ["missing_rgir"], "ndsm": ["missing_ndsm"]}[missing]


def writable_dir(path, flag):
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write there ({e.strerror}); choose a writable directory")
    return path


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp_dtype = autocast_dtype(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    if args.benchmark:
        return benchmark(args, device, amp_dtype)
    checkpoint_path = Path(args.checkpoint) if args.checkpoint else latest_checkpoint()
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint["config"]["num_classes"] != len(CLASSES):
        raise DataError(
            f"{checkpoint_path}: the model predicts {checkpoint['config']['num_classes']} classes but the ISPRS "
            f"labels have {len(CLASSES)}; use a checkpoint trained on ISPRS data"
        )
    window = check_patch(args.patch or checkpoint["train_args"]["patch"])
    overlap = args.overlap if args.overlap is not None else window // 4
    if not 0 <= overlap < window:
        raise DataError(f"--overlap {overlap}: must be at least 0 and smaller than the window ({window})")
    if args.predict or args.rgir or args.ndsm:
        return predict(args, checkpoint, window, overlap, device, amp_dtype)
    save_dir = writable_dir(args.save_predictions, "--save-predictions") if args.save_predictions else None
    if args.json:
        writable_dir(Path(args.json).parent, "--json")

    data_dir = args.data or checkpoint["data"]
    tiles = data.load_split(data_dir, args.split, None if args.data else checkpoint.get("dataset"))
    if args.eroded:
        missing_eroded = [t.name for t in tiles if t.label_eroded is None]
        if missing_eroded:
            raise DataError(f"--eroded: no eroded label (*_noBoundary.tif) for tile(s) {', '.join(missing_eroded)} in {data_dir}")
    model = model_from_checkpoint(checkpoint, device, args.compile, args.channels_last)
    scenarios = chosen_scenarios(args.missing)

    start = time.perf_counter()
    results, distances = evaluate_tiles(model, tiles, scenarios, window, overlap, args.batch_size, device, amp_dtype,
                                        eroded=args.eroded, feature_distance=args.feature_distance, save_dir=save_dir,
                                        channels_last=args.channels_last)
    seconds = time.perf_counter() - start
    labels = "eroded labels" if args.eroded else "full reference labels"
    print(f"\n{checkpoint_path}: {args.split} split, {len(tiles)} tiles, {labels}, {seconds:.1f} s (F1 in %)")
    print(table(results))
    if distances:
        print()
        print(distance_table(distances))
    if args.json:
        report = {"checkpoint": str(checkpoint_path), "split": args.split, "eroded": args.eroded, "scenarios": results}
        if distances:
            report["feature_distance"] = distances_by_name(distances)
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    data.exit_on_user_error(main)
