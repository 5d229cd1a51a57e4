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
labelled pixel. A checkpoint trained on one's own data (own_data.py) is scored
on its own classes, with no clutter column unless a class is marked as such.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
import own_data
from data import CLASSES, IGNORE_INDEX, DataError
from dis2 import SCENARIOS
from runtime import (add_inference_flags, add_windows, inference_setup, model_from_checkpoint, model_on_windows,
                     window_batches, windows_at, writable_dir)

SCORED = data.ISPRS_CLASSES.scored  # averaged into mF1 and mIoU, as in the paper
ROW_NAMES = {"full": "Full Modality", "missing_rgir": "Missing RGIR - Only NDSM", "missing_ndsm": "Missing NDSM - Only RGIR"}
SHORT_NAMES = {s: name.split(" - ")[0] for s, name in ROW_NAMES.items()}  # for figures and scenario pairs
COLUMN_NAMES = data.ISPRS_CLASSES.columns
DISTANCE_PAIRS = (("full", "missing_rgir"), ("full", "missing_ndsm"), ("missing_rgir", "missing_ndsm"))
# Flags of earlier versions that now belong to another command.
MOVED = {
    "--predict": "python predict.py --out OUT --rgir ORTHO --ndsm NDSM",
    "--rgir": "python predict.py --out OUT --rgir ORTHO --ndsm NDSM",
    "--ndsm": "python predict.py --out OUT --rgir ORTHO --ndsm NDSM",
    "--benchmark": "python bench.py --inference",
}


# -----------------------------------------------------------------------------
# Metrics


def confusion_matrix(pred, label, num_classes=len(CLASSES)):
    """Rows: reference class, columns: predicted class; IGNORE_INDEX pixels are skipped."""
    valid = label != IGNORE_INDEX
    index = num_classes * label[valid].astype(np.int64) + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion, classes=data.ISPRS_CLASSES):
    """Per-class F1 and IoU, mF1 and mIoU over the scored classes (the paper's five; `classes`, a
    data.ClassTable), OA; in percent. A class absent from both reference and prediction has no F1 (None)."""
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 100 * 2 * tp / (2 * tp + fp + fn)
        iou = 100 * tp / (tp + fp + fn)
    scored = [classes.names.index(c) for c in classes.scored]
    value = lambda x: None if np.isnan(x) else float(x)
    return {
        "f1": {c: value(f1[i]) for i, c in enumerate(classes.names)},
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
    features Z of each pair of scenarios, averaged over the window's pixels;
    under the key "z_full" it adds the L2 norm of the full scenario's Z, the
    yardstick of a distance that a rescaling of all of Z cannot move; under
    "z_channels" the per-channel sums of standardised_distance, which no
    rescaling of Z's channels can move.
    `channels_last` is the memory format of the model (see runtime.model_on_windows)."""
    H, W = tile.label.shape
    rgir, ndsm = data.pad_to_window(tile.rgir, window), data.pad_to_window(tile.ndsm, window)
    starts = data.sliding_windows(*ndsm.shape[:2], window, overlap)
    K = model.config.num_classes
    # Summed softmax probabilities: their argmax is that of the average over windows.
    probs = {s: torch.zeros(K, *ndsm.shape[:2], device=device) for s in scenarios}
    for batch in window_batches(starts, batch_size):
        outputs = model_on_windows(model, windows_at(rgir, batch, window), windows_at(ndsm, batch, window), device,
                                   amp_dtype, channels_last, scenarios=scenarios)
        for s, out in outputs.items():
            add_windows(probs[s], batch, out.logits.float().softmax(dim=1), window)
        for key in distances or {}:
            if key == "z_channels":
                add_channel_sums(distances[key], outputs)
                continue
            if key == "z_full":
                distance = outputs["full"].z.float().norm(dim=1).mean(dim=(1, 2))  # (B,)
            else:
                a, b = key
                distance = (outputs[a].z.float() - outputs[b].z.float()).norm(dim=1).mean(dim=(1, 2))
            distances[key][0] += distance.sum().item()
            distances[key][1] += len(batch)
    return {s: p[:, :H, :W].argmax(0).to(torch.uint8).cpu().numpy() for s, p in probs.items()}


def add_channel_sums(sums, outputs):
    """Adds a batch of windows to the per-channel sums of standardised_distance: pixels, the full
    scenario's sum and sum of squares of each channel of Z, and each pair's sum of squared differences."""
    z = {s: out.z.double() for s, out in outputs.items()}
    batch = {"pixels": z["full"][:, 0].numel(), "full_sum": z["full"].sum((0, 2, 3)), "full_sumsq": z["full"].square().sum((0, 2, 3))}
    batch.update({distance_name(pair): (z[pair[0]] - z[pair[1]]).square().sum((0, 2, 3)) for pair in DISTANCE_PAIRS})
    for key, value in batch.items():
        sums[key] = sums.get(key, 0) + (value if key == "pixels" else value.cpu().numpy())


def standardised_distance(sums, pair):
    """The distance of Z between the scenarios of `pair` with each channel in units of its own spread
    in the full scenario: sqrt(mean over pixels of sum_c ((Z_a,c - Z_b,c) / sigma_c)^2), sigma_c the
    standard deviation of channel c of the full scenario's Z over the same pixels. Z = ReLU(BN(.))
    feeds a 1x1 classifier, so a channel times c_c > 0 (batch norm's scale and shift) and the
    classifier's column divided by c_c leave the logits as they are and move the raw distance, but
    not this one. Channels constant in the full scenario (dead after the ReLU) are left out. Works
    on arrays of sums with leading axes (resamples of tiles)."""
    pixels = np.asarray(sums["pixels"], np.float64)[..., None]
    mean_square = np.asarray(sums["full_sumsq"]) / pixels
    variance = mean_square - (np.asarray(sums["full_sum"]) / pixels) ** 2
    alive = variance > 1e-9 * mean_square  # rounding leaves a constant channel's variance near, not at, 0
    ratio = np.where(alive, np.asarray(sums[distance_name(pair)]) / np.where(alive, variance, 1.0), 0.0)
    return np.sqrt(ratio.sum(-1) / pixels[..., 0])


def evaluate_tiles(model, tiles, scenarios, window, overlap, batch_size, device, amp_dtype,
                   eroded=False, feature_distance=False, save_dir=None, progress=True, channels_last=None,
                   classes=data.ISPRS_CLASSES):
    """Scores each scenario over all tiles from one confusion matrix per scenario.
    Returns (scores per scenario, feature distances per pair or None, per tile):
    `per_tile[name]` holds the tile's confusion matrix per scenario (rows: reference,
    columns: predicted) and, with `feature_distance`, its windows' mean distance per pair,
    the mean norm of the full scenario's Z ("z_full") and the number of windows, so that
    any statistic over tiles can be recomputed without the model. `classes` (data.ClassTable): what
    the model predicts, ISPRS's or one's own (own_data.class_table)."""
    model.eval()  # batch norm with its running statistics; train.py switches back after validation
    confusion = {s: np.zeros((len(classes.names),) * 2, np.int64) for s in scenarios}
    pairs = [pair for pair in DISTANCE_PAIRS if set(pair) <= set(scenarios)] if feature_distance else []
    every_pair = len(pairs) == len(DISTANCE_PAIRS)
    keys = pairs + (["z_full"] if pairs and "full" in scenarios else [])
    distances = {key: [0.0, 0] for key in keys}
    channel_sums = {}
    per_tile = {}
    for tile in tqdm(tiles, desc="tiles", unit="tile", disable=not progress):
        label = tile.label_eroded if eroded else tile.label
        tile_distances = {key: [0.0, 0] for key in keys} | ({"z_channels": {}} if every_pair else {})
        predictions = predict_tile(model, tile, scenarios, window, overlap, batch_size, device, amp_dtype,
                                   tile_distances if keys else None, channels_last)
        per_tile[tile.name] = {"confusion": {}}
        for s, pred in predictions.items():
            tile_confusion = confusion_matrix(pred, label, len(classes.names))
            confusion[s] += tile_confusion
            per_tile[tile.name]["confusion"][s] = tile_confusion.tolist()
            if save_dir is not None:
                Image.fromarray(classes.colours[pred]).save(Path(save_dir) / f"{tile.name}_{s}.png")
        if keys:
            sums = tile_distances.pop("z_channels", None)
            windows = next(iter(tile_distances.values()))[1]
            per_tile[tile.name].update(windows=windows, feature_distance={
                distance_name(key): total / windows for key, (total, _) in tile_distances.items()})
            for key, (total, count) in tile_distances.items():
                distances[key][0] += total
                distances[key][1] += count
            if sums:
                per_tile[tile.name]["z_channels"] = {k: v if k == "pixels" else v.tolist() for k, v in sums.items()}
                channel_sums = {k: channel_sums.get(k, 0) + v for k, v in sums.items()}
    mean_distance = {key: total / max(count, 1) for key, (total, count) in distances.items()} if feature_distance else None
    if channel_sums:
        mean_distance["standardised"] = {pair: float(standardised_distance(channel_sums, pair)) for pair in DISTANCE_PAIRS}
    return {s: scores(c, classes) for s, c in confusion.items()}, mean_distance, per_tile


# -----------------------------------------------------------------------------
# Tables


def fmt(x, width=8):
    return f"{'-':>{width}}" if x is None else f"{x:{width}.2f}"


def table(results, classes=data.ISPRS_CLASSES):
    """The layout of the paper's Table 1: a row per scenario, the five class F1
    scores, mF1 and mIoU; then OA and the clutter F1 (not in the means). One's
    own classes (`classes`) the same way: the scored ones, and those marked as
    clutter, if any, beside."""
    width = max(13, 1 + max(map(len, classes.columns)))
    beside = lambda cell: "".join(f" |{cell(c)}" for c in classes.beside)
    header = (f"{'Scenario':<26}" + "".join(f"{c:>{width}}" for c in classes.columns) + f"{'mF1':>8}{'mIoU':>8}{'OA':>8}"
              + beside(lambda c: f"{c.capitalize():>8}"))
    lines = [header, "-" * len(header)]
    for s, r in results.items():
        cells = "".join(fmt(r["f1"][c], width) for c in classes.scored)
        lines.append(f"{ROW_NAMES[s]:<26}{cells}{fmt(r['mF1'])}{fmt(r['mIoU'])}{fmt(r['OA'])}" + beside(lambda c: fmt(r["f1"][c])))
    return "\n".join(lines)


def distance_name(key):
    """(a, b) -> "a_vs_b", the JSON form of a pair; "z_full" stays as it is."""
    return key if isinstance(key, str) else f"{key[0]}_vs_{key[1]}"


def distances_by_name(distances):
    """{(a, b): d, "z_full": n, "standardised": {(a, b): d}} -> the same with "a_vs_b" names, the JSON form of Table 3."""
    return {distance_name(key): distances_by_name(d) if isinstance(d, dict) else d for key, d in distances.items()}


def distance_table(distances):
    """The layout of the paper's Table 3: mean L2 distance between the
    penultimate features Z of two scenarios, over all windows; the same
    divided by the mean norm of the full scenario's Z, which a rescaling of
    all of Z cannot move; and the standardised distance (standardised_distance),
    which no rescaling of Z's channels can move (with all three scenarios)."""
    lines = [f"{'Scenario pair':<36}{'L2 distance of Z':>18}{'/ |Z full|':>12}{'standardised':>14}"]
    for key, d in distances.items():
        if key in ("z_full", "standardised"):
            continue
        relative = f"{d / distances['z_full']:>12.4f}" if distances.get("z_full") else f"{'-':>12}"
        standardised = f"{distances['standardised'][key]:>14.4f}" if "standardised" in distances else f"{'-':>14}"
        lines.append(f"{SHORT_NAMES[key[0]] + ' vs ' + SHORT_NAMES[key[1]]:<36}{d:>18.4f}{relative}{standardised}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = data.ArgumentParser(description="Evaluate a DIS2 checkpoint in the paper's scenarios (Table 1).")
    p.add_argument("--data", help="ISPRS data directory (default: the one stored in the checkpoint)")
    p.add_argument("--dataset", choices=data.DATASETS,
                   help="for a --data folder that holds both (default: detected in --data; without --data, "
                        "the checkpoint's)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="the tiles scored (default %(default)s)")
    p.add_argument("--missing", choices=("none", "rgir", "ndsm", "all"), default="all",
                   help="the scenario: none = full modality, rgir = RGIR missing (NDSM only), ndsm = NDSM missing, all = the three")
    p.add_argument("--eroded", action="store_true", help="score against the eroded labels (*_noBoundary.tif), the ISPRS convention")
    p.add_argument("--save-predictions", metavar="DIR", help="write one colour PNG per tile and scenario")
    p.add_argument("--json", metavar="PATH", help="write the scores as JSON")
    p.add_argument("--feature-distance", action="store_true",
                   help="also report the paper's Table 3: L2 distance between the features Z of the scenarios")
    add_inference_flags(p)
    data.refuse_moved(argv, MOVED)
    return p.parse_args(argv)


def chosen_scenarios(missing):
    return {"all": list(SCENARIOS), "none": ["full"], "rgir": ["missing_rgir"], "ndsm": ["missing_ndsm"]}[missing]


def main(argv=None):
    args = parse_args(argv)
    device, amp_dtype, checkpoint_path, checkpoint, window, overlap = inference_setup(args)
    save_dir = writable_dir(args.save_predictions, "--save-predictions") if args.save_predictions else None
    if args.json:
        writable_dir(Path(args.json).parent, "--json")
    data_dir = args.data or checkpoint["data"]
    classes = own_data.class_table(args.own_data)  # inference_setup's: None for ISPRS
    if args.own_data:
        tiles = own_data.load_split(data_dir, args.split, args.own_data)
    else:
        trained_on = checkpoint.get("dataset")
        dataset = args.dataset or (data.detect_dataset(data_dir) if args.data else trained_on)
        if trained_on and dataset != trained_on:
            print(f"notice: {checkpoint_path} was trained on {trained_on}, scored here on {dataset}")
        tiles = data.load_split(data_dir, args.split, dataset)
    eroded_only = [t.name for t in tiles if t.labels == "eroded"]
    if eroded_only and not args.eroded:
        raise DataError(f"{data_dir}: only eroded labels (*_noBoundary.tif) for tile(s) {', '.join(eroded_only)}; "
                        "add --eroded to score against them")
    if args.eroded:
        missing_eroded = [t.name for t in tiles if t.label_eroded is None]
        if missing_eroded:
            raise DataError(f"--eroded: no eroded label (*_noBoundary.tif) for tile(s) {', '.join(missing_eroded)} in {data_dir}")
    model = model_from_checkpoint(checkpoint, device, args.compile, args.channels_last)
    scenarios = chosen_scenarios(args.missing)

    start = time.perf_counter()
    results, distances, per_tile = evaluate_tiles(model, tiles, scenarios, window, overlap, args.batch_size, device, amp_dtype,
                                        eroded=args.eroded, feature_distance=args.feature_distance, save_dir=save_dir,
                                        channels_last=args.channels_last, classes=classes)
    seconds = time.perf_counter() - start
    labels = "eroded labels" if args.eroded else "full reference labels"
    print(f"\n{checkpoint_path}: {args.split} split, {len(tiles)} tiles, {labels}, {seconds:.1f} s (F1 in %)")
    print(table(results, classes))
    if distances:
        print()
        print(distance_table(distances))
    if args.json:
        report = {"checkpoint": str(checkpoint_path), "split": args.split, "eroded": args.eroded, "scenarios": results}
        if distances:
            report["feature_distance"] = distances_by_name(distances)
        report["per_tile"] = per_tile
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}: the scores, per scenario and per tile")
    if save_dir is not None:
        print(f"wrote {len(tiles) * len(scenarios)} colour maps to {save_dir}/ (TILE_SCENARIO.png, one per tile and scenario)")


if __name__ == "__main__":
    data.exit_on_user_error(main)
