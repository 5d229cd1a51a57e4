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
import resource
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import data
from data import CLASSES, IGNORE_INDEX, DataError
from dis2 import DIS2, DIS2Config, SCENARIOS, STRIDE

SCORED = CLASSES[:5]  # averaged into mF1 and mIoU, as in the paper
ROW_NAMES = {"full": "Full Modality", "missing_rgir": "Missing RGIR - Only NDSM", "missing_ndsm": "Missing NDSM - Only RGIR"}
SHORT_NAMES = {s: name.split(" - ")[0] for s, name in ROW_NAMES.items()}  # for figures and scenario pairs
COLUMN_NAMES = ("Imp. Surface", "Building", "Low Veg.", "Tree", "Car")
DISTANCE_PAIRS = (("full", "missing_rgir"), ("full", "missing_ndsm"), ("missing_rgir", "missing_ndsm"))
CHECKPOINT_FORMAT = "dis2-checkpoint-2"  # 2: fusion and decoder under fusion_decoders (DIS2Config.layout)
BENCHMARK_WARMUP = 2


# -----------------------------------------------------------------------------
# Devices and checkpoints (train.py uses these too)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def autocast_dtype(device, amp):
    """Mixed precision on CUDA (bf16 where supported, else fp16); None = full precision."""
    if amp is None:
        amp = device.type == "cuda"
    if amp and device.type != "cuda":
        raise DataError("--amp needs a CUDA device; drop --amp or use --device cuda")
    if not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def prepared(model, device, compile_model=False):
    """The model on `device` for inference: channels-last memory on CUDA, optionally compiled."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def model_from_checkpoint(checkpoint, device, compile_model=False):
    model = DIS2(DIS2Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return prepared(model, device, compile_model)


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
def predict_tile(model, tile, scenarios, window, overlap, batch_size, device, amp_dtype, distances=None):
    """Class maps (H, W) uint8 for each scenario. Windows are batched; each
    window runs every encoder once for all scenarios. With `distances` (a dict
    pair -> [sum, count]), adds the L2 distance between the penultimate
    features Z of each pair of scenarios, averaged over the window's pixels."""
    H, W = tile.label.shape
    rgir, ndsm = data.pad_to_window(tile.rgir, window), data.pad_to_window(tile.ndsm, window)
    starts = data.sliding_windows(*ndsm.shape[:2], window, overlap)
    K = len(CLASSES)
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    # Summed softmax probabilities: their argmax is that of the average over windows.
    probs = {s: torch.zeros(K, *ndsm.shape[:2], device=device) for s in scenarios}
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        r, n = data.normalise(
            np.stack([rgir[y : y + window, x : x + window] for y, x in batch]),
            np.stack([ndsm[y : y + window, x : x + window] for y, x in batch]),
        )
        r, n = (x.to(device, non_blocking=True).contiguous(memory_format=channels_last) for x in (r, n))
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
                   eroded=False, feature_distance=False, save_dir=None, progress=True):
    """Scores each scenario over all tiles from one confusion matrix per scenario.
    Returns (scores per scenario, feature distances per pair or None)."""
    model.eval()  # batch norm with its running statistics; train.py switches back after validation
    confusion = {s: np.zeros((len(CLASSES),) * 2, np.int64) for s in scenarios}
    distances = {pair: [0.0, 0] for pair in DISTANCE_PAIRS if set(pair) <= set(scenarios)} if feature_distance else None
    for tile in tqdm(tiles, desc="tiles", unit="tile", disable=not progress):
        label = tile.label_eroded if eroded else tile.label
        predictions = predict_tile(model, tile, scenarios, window, overlap, batch_size, device, amp_dtype, distances)
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


def claims(results, distances):
    """The paper's three claims that the synthetic benchmark can test, each (statement, holds, evidence)."""
    hf, ours = results["hf"], results["dis2"]
    missing = ("missing_rgir", "missing_ndsm")
    gains = {s: ours[s]["mF1"] - hf[s]["mF1"] for s in missing}
    shrink = {p: distances["dis2"][p] < distances["hf"][p] for p in DISTANCE_PAIRS[:2]}
    hardest = min(SCENARIOS, key=lambda s: ours[s]["mF1"])
    return [
        ("DIS2 beats HF in both missing scenarios (mF1)", all(g > 0 for g in gains.values()),
         ", ".join(f"{SHORT_NAMES[s]}: {gains[s]:+.2f}" for s in missing)),
        ("distillation shrinks the full-vs-missing feature distance (DIS2 < HF)", all(shrink.values()),
         ", ".join(f"{SHORT_NAMES[b]}: DIS2 {distances['dis2'][a, b]:.4f} vs HF {distances['hf'][a, b]:.4f}"
                   for a, b in DISTANCE_PAIRS[:2])),
        ("missing RGIR is the hardest scenario (lowest DIS2 mF1)", hardest == "missing_rgir",
         ", ".join(f"{SHORT_NAMES[s]} {ours[s]['mF1']:.2f}" for s in SCENARIOS)),
    ]


def tables_markdown(results, distances, title):
    """Analogues of the paper's Tables 1-3 and the outcome of its claims.
    `results`: variant -> scenario -> scores; `distances`: variant -> pair -> L2 distance."""
    parts = [f"# {title}", "", "## Table 1 analogue: DIS2, F1 per class, mF1, mIoU (%)", "",
             markdown_table(SCORE_HEADER, [score_rows(ROW_NAMES[s], r) for s, r in results["dis2"].items()]), "",
             "## Table 2 analogue: the ablation (F1 %)", ""]
    names = {"hf": "Hierarchical Fusion (HF)", "hf+cw": "HF + Classwise (CW)", "hf+dlkd": "HF + DLKD", "dis2": "HF + CW + DLKD (DIS2)"}
    rows = []
    for s in SCENARIOS:
        rows.append([f"**{ROW_NAMES[s]}**", *[""] * (len(SCORE_HEADER) - 1)])
        rows += [score_rows(names[v], results[v][s]) for v in results]
    parts += [markdown_table(SCORE_HEADER, rows), "",
              "## Table 3 analogue: mean L2 distance between the penultimate features Z of two scenarios", "",
              markdown_table(["Scenario pair", "HF", "DIS2"],
                             [[f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}",
                               f"{distances['hf'][a, b]:.4f}", f"{distances['dis2'][a, b]:.4f}"] for a, b in DISTANCE_PAIRS]),
              "", "## The paper's claims on this benchmark", ""]
    parts += [f"- {statement}: **{'holds' if holds else 'does not hold'}** ({evidence})"
              for statement, holds, evidence in claims(results, distances)]
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


def report_benchmark(what, result, args, device, amp_dtype):
    """A readable line, then the result as one JSON object (the last line printed)."""
    result = dict(what=what, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  threads=torch.get_num_threads(), patch=args.patch, batch_size=args.batch_size,
                  amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None, compile=args.compile,
                  torch=torch.__version__, **result)
    print(f"{what}: median {result['step_s_median']:.3f} s (min {result['step_s_min']:.3f}, max "
          f"{result['step_s_max']:.3f}, {result['repeats']} steps), {result['images_per_s']:.2f} images/s, "
          f"peak memory {result['peak_mem_mb']:.0f} MB")
    print(json.dumps(result))


def benchmark(args, device, amp_dtype):
    """One full-modality forward pass on random inputs, as evaluation runs it."""
    torch.manual_seed(0)
    model = prepared(DIS2(DIS2Config()), device, args.compile)
    patch = args.patch or 512
    shape = (args.batch_size, patch, patch)
    rgir, ndsm = torch.randn(shape[0], 3, *shape[1:], device=device), torch.randn(shape[0], 1, *shape[1:], device=device)

    @torch.inference_mode()
    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(rgir, ndsm)

    args.patch = patch
    report_benchmark("inference", measure(step, args.batch_size, device, BENCHMARK_WARMUP, args.repeats), args, device, amp_dtype)


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
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on with CUDA)")
    p.add_argument("--batch-size", type=data.positive_int, default=4, help="windows per forward pass")
    p.add_argument("--patch", type=data.positive_int, help="side of the sliding windows, a multiple of 16 (default: the training patch)")
    p.add_argument("--overlap", type=int, help="overlap of adjacent windows in pixels (default: a quarter window)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--benchmark", action="store_true",
                   help="time full-modality forward passes of the default model on random inputs at "
                        "--patch (default 512)/--batch-size/--device and exit")
    p.add_argument("--repeats", type=data.positive_int, default=5, help="timed steps of --benchmark")
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
    save_dir = writable_dir(args.save_predictions, "--save-predictions") if args.save_predictions else None
    if args.json:
        writable_dir(Path(args.json).parent, "--json")

    data_dir = args.data or checkpoint["data"]
    tiles = data.load_split(data_dir, args.split, None if args.data else checkpoint.get("dataset"))
    if args.eroded:
        missing_eroded = [t.name for t in tiles if t.label_eroded is None]
        if missing_eroded:
            raise DataError(f"--eroded: no eroded label (*_noBoundary.tif) for tile(s) {', '.join(missing_eroded)} in {data_dir}")
    model = model_from_checkpoint(checkpoint, device, args.compile)
    scenarios = chosen_scenarios(args.missing)

    start = time.perf_counter()
    results, distances = evaluate_tiles(model, tiles, scenarios, window, overlap, args.batch_size, device, amp_dtype,
                                        eroded=args.eroded, feature_distance=args.feature_distance, save_dir=save_dir)
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
