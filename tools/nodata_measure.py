"""What reading nodata as values costs, and what predicting each region in the scenario its data
allows gives back (docs/predict.md, "Nodata"):

    python tools/nodata_measure.py --data data/quickstart --checkpoint runs/quickstart/best.pt

Takes the test tiles of a dataset and damages each in two ways, one at a time: holes in the NDSM,
smooth random blobs over about 30% of the tile (as image matching leaves over water, shadows and
block edges), and a collar of the orthophoto, the part beyond a slanted mosaic edge, about 25%.
Each damaged tile is predicted by predict.predict_strips as reading the files used to make it
(nodata read as 0: a hole's NaN or -9999 as 0 m, a collar as black pixels, all in the full
scenario), and nodata-aware (the validity masks given: each region in its own scenario), with the
holes filled for the windows that straddle an edge by pull-push (predict.filled_by_pull_push), or, for
comparison, by the window's mean. Prints mF1 (%) over the tiles inside and outside the damage,
beside the full scenario on the intact tiles.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import evaluate  # noqa: E402
import predict  # noqa: E402
from runtime import check_isprs_classes, default_overlap, load_checkpoint, model_from_checkpoint  # noqa: E402

CPU = torch.device("cpu")


def blobs(shape, share, rng):
    """(H, W) bool: smooth random blobs covering `share` of the tile."""
    coarse = rng.standard_normal((shape[0] // 48 + 2, shape[1] // 48 + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.BICUBIC))
    return field > np.quantile(field, 1 - share)


def collar(shape, share, rng):
    """(H, W) bool: the part of the tile beyond a slanted straight edge, `share` of it."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    across = np.cos(angle) * xs + np.sin(angle) * ys
    return across > np.quantile(across, 1 - share)


def mean_filled(x, valid):
    """predict.filled_by_pull_push's stand-in for the comparison: the window's mean of the pixels with data."""
    if valid is None or valid.all():
        return x
    weight = torch.from_numpy(valid).to(x.device, x.dtype)[:, None]
    mean = (x * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True)
    return torch.where(weight > 0, x, mean)


def labels(model, rgir, ndsm, window, rgir_valid=None, ndsm_valid=None):
    settings = predict.Settings(model, window, default_overlap(window), 4, CPU)
    strips = predict.predict_strips(settings, rgir, ndsm, rgir_valid, ndsm_valid)
    return np.concatenate([strip["labels"] for strip in strips])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a dataset folder (e.g. the quick start's data/quickstart)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--holes", type=float, default=0.3, help="share of each tile's NDSM without data")
    p.add_argument("--collar", type=float, default=0.25, help="share of each tile's orthophoto without data")
    p.add_argument("--seed", type=int, default=0, help="seed of the nodata holes (default %(default)s)")
    args = p.parse_args()
    checkpoint = check_isprs_classes(load_checkpoint(args.checkpoint), args.checkpoint)
    model = model_from_checkpoint(checkpoint, CPU)
    window = checkpoint["train_args"]["patch"]
    tiles = data.load_split(args.data, "test")
    runs = ("intact data, full", "nodata read as 0", "nodata-aware", "nodata-aware, mean fill")
    cases = {"NDSM holes": "ndsm", "orthophoto collar": "rgir"}
    confusion = {(case, region, run): 0 for case in cases for region in ("inside", "outside") for run in runs}
    share = {case: [] for case in cases}
    rng = np.random.default_rng(args.seed)
    aware_fill = predict.filled_by_pull_push
    for tile in tiles:
        intact = labels(model, tile.rgir, tile.ndsm, window)
        for case, modality in cases.items():
            damage = blobs(tile.ndsm.shape, args.holes, rng) if modality == "ndsm" else collar(
                tile.ndsm.shape, args.collar, rng)
            rgir = np.where(damage[..., None], 0, tile.rgir) if modality == "rgir" else tile.rgir
            ndsm = np.where(damage, 0, tile.ndsm) if modality == "ndsm" else tile.ndsm
            masks = {f"{modality}_valid": ~damage}
            found = {"intact data, full": intact, "nodata read as 0": labels(model, rgir, ndsm, window),
                     "nodata-aware": labels(model, rgir, ndsm, window, **masks)}
            predict.filled_by_pull_push = mean_filled
            found["nodata-aware, mean fill"] = labels(model, rgir, ndsm, window, **masks)
            predict.filled_by_pull_push = aware_fill
            share[case].append(damage.mean())
            for run, prediction in found.items():
                for region, where in (("inside", damage), ("outside", ~damage)):
                    confusion[case, region, run] += evaluate.confusion_matrix(prediction[where], tile.label[where])
    print(f"{args.checkpoint} on {len(tiles)} test tiles of {args.data}: mF1 (%)")
    print("| damage | region | share of pixels | " + " | ".join(runs) + " |")
    print("|---|---|---|" + "---|" * len(runs))
    for case in cases:
        for region in ("inside", "outside"):
            part = np.mean(share[case]) if region == "inside" else 1 - np.mean(share[case])
            cells = [f"{evaluate.scores(confusion[case, region, run])['mF1']:.2f}" for run in runs]
            print(f"| {case} | {region} | {100 * part:.0f}% | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    data.exit_on_user_error(main)
