"""
What each modality of an ISPRS folder (real or synthetic) tells about each
class, without deep training: the class shares of each split, the F1 of a
per-pixel probe on the IRRG, the NDSM and both, and how well one threshold on
the smoothed NDSM tells pairs of classes apart.

    python probe.py data/quickstart                 # seconds
    python probe.py vaihingen/ --pixels 100000

The probe is a per-pixel classifier (a multilayer perceptron with PROBE_HIDDEN
hidden units) on hand-crafted local features of the IRRG, the NDSM or both:
each band, its mean and standard deviation over PROBE_WINDOWS px windows. It is
fitted on random pixels of the train tiles with median-frequency class weights,
as in training, and scored on every pixel of the test tiles against the full
labels. It takes seconds, which makes it the statistic for calibrating the
synthetic scenes of synth.py (docs/synthetic_benchmark.md); a network also sees
shapes and context, so the probe ranks modalities and classes rather than
predicting scores. The threshold line gives the balanced accuracy of the best
single threshold on the 9 x 9 px mean NDSM (train and test tiles): 0.5 means the
height alone says nothing.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import (
    CLASSES,
    DATASETS,
    SPLITS,
    ArgumentParser,
    DataError,
    Tile,
    class_frequencies,
    detect_dataset,
    exit_on_user_error,
    load_split,
    positive_int,
)

_IMPERVIOUS, _BUILDING, _LOW_VEGETATION, _TREE, _CAR, _CLUTTER = range(len(CLASSES))


# ---- Probe: what each modality tells about each class, without deep training -----------------

# A per-pixel classifier on hand-crafted local features of one modality or both: each band, and its
# mean and standard deviation over square windows of these sizes (0.3-8 m at 0.1 m per pixel:
# texture, objects, their surroundings). A multilayer perceptron with one small hidden layer rather
# than a logistic regression: a linear model cannot combine colour with texture (grey and rough is a
# roof, grey and smooth a road), so it takes most grey roofs for roads, which networks do not. It is
# fitted in seconds, so the generator can be tuned with it (docs/synthetic_benchmark.md); a network
# also sees shapes and context, so the probe ranks modalities and classes rather than predicting scores.
PROBE_WINDOWS = (3, 9, 27, 81)
PROBE_INPUTS = {"IRRG+NDSM": [0, 1, 2, 3], "IRRG only": [0, 1, 2], "NDSM only": [3]}  # bands of probe_features
PROBE_HIDDEN = 32
PROBE_DECAY = 1e-4  # a little weight decay: with both modalities the classes are nearly separable


def _box_mean(x, size):
    """Mean over size x size windows of a (C, H, W) tensor, edges repeated: differences of cumulative
    sums (in float64, exact enough for variances), so the cost does not grow with the window."""
    r = size // 2
    x = F.pad(x[None], (r, r, r, r), mode="replicate")[0].double()
    for dim in (1, 2):
        total = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == 1 else (1, 0))
        x = (total.narrow(dim, size, total.shape[dim] - size) - total.narrow(dim, 0, total.shape[dim] - size)) / size
    return x


def probe_features(tile: Tile) -> torch.Tensor:
    """(4, F, H, W) float32 features per band (IR, R, G, NDSM): the band in [0, 1], and its mean and
    standard deviation over each of PROBE_WINDOWS."""
    x = torch.cat([torch.from_numpy(tile.rgir).permute(2, 0, 1), torch.from_numpy(tile.ndsm)[None]]).double() / 255
    features = [x]
    for size in PROBE_WINDOWS:
        mean = _box_mean(x, size)
        features += [mean, (_box_mean(x * x, size) - mean * mean).clamp(min=0).sqrt()]
    return torch.stack(features, 1).float()


def probe(train: list[Tile], test: list[Tile], pixels=50_000, seed=0) -> dict:
    """For each entry of PROBE_INPUTS, fit the probe on `pixels` random pixels of the training tiles
    (full-batch L-BFGS; class weights w_c = median frequency / f_c, as in training) and score it on
    every pixel of the test tiles: {inputs: {class: F1 in % or None}}. Deterministic given the seed."""
    generator = torch.Generator().manual_seed(seed)
    areas = np.array([tile.label.size for tile in train])
    samples, labels = [], []
    for tile, count in zip(train, np.floor(pixels * areas / areas.sum()).astype(int)):
        chosen = torch.randint(tile.label.size, (count,), generator=generator)
        samples.append(probe_features(tile).flatten(2)[..., chosen])  # (4, F, count)
        labels.append(torch.from_numpy(tile.label.ravel().astype(np.int64))[chosen])
    x, y = torch.cat(samples, 2), torch.cat(labels)
    mean, std = x.mean(2, keepdim=True), x.std(2, keepdim=True) + 1e-6
    x = (x - mean) / std
    frequencies = torch.bincount(y, minlength=len(CLASSES)).float()
    weights = torch.where(frequencies > 0, frequencies[frequencies > 0].median() / frequencies, 0)
    models = {}
    # Fitting takes most of the time (about a minute per input set on a 2-core CPU for 50000 pixels).
    bar = tqdm(total=len(PROBE_INPUTS) + len(test), desc="probe: fitting, then scoring the test tiles", unit="step",
               leave=False, disable=None)
    for name, bands in PROBE_INPUTS.items():
        inputs = x[bands].flatten(0, 1).T.contiguous()  # (pixels, features)
        with torch.random.fork_rng():  # the initial weights from the seed, leaving the global generator alone
            torch.manual_seed(seed)
            model = models[name] = torch.nn.Sequential(torch.nn.Linear(inputs.shape[1], PROBE_HIDDEN), torch.nn.ReLU(),
                                                       torch.nn.Linear(PROBE_HIDDEN, len(CLASSES)))
        optimizer = torch.optim.LBFGS(model.parameters(), max_iter=150, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            decay = PROBE_DECAY * sum(layer.weight.pow(2).sum() for layer in model[::2])
            loss = F.cross_entropy(model(inputs), y, weight=weights) + decay
            loss.backward()
            return loss

        optimizer.step(closure)
        bar.update()
    confusion = {name: torch.zeros(len(CLASSES) ** 2, dtype=torch.int64) for name in PROBE_INPUTS}
    with torch.no_grad():
        for tile in test:
            features = (probe_features(tile).flatten(2) - mean) / std  # (4, F, H*W)
            label = torch.from_numpy(tile.label.ravel().astype(np.int64))
            for name, bands in PROBE_INPUTS.items():
                predicted = models[name](features[bands].flatten(0, 1).T).argmax(1)
                confusion[name] += torch.bincount(label * len(CLASSES) + predicted, minlength=len(CLASSES) ** 2)
            bar.update()
    bar.close()
    results = {}
    for name, counts in confusion.items():
        counts = counts.view(len(CLASSES), len(CLASSES)).double()  # rows: reference, columns: predicted
        f1 = 200 * counts.diag() / (counts.sum(0) + counts.sum(1))
        results[name] = {c: None if f.isnan() else float(f) for c, f in zip(CLASSES, f1)}
    return results


def ndsm_threshold_accuracy(tiles: list[Tile], cls: int, other: int) -> float:
    """Balanced accuracy of the best single threshold on the 9 x 9-pixel mean of the NDSM that tells
    class `cls` from class `other`: 0.5 means the smoothed height says nothing, 1 that it says all."""
    levels = 9 * 9 * 255 + 1  # the 9 x 9 sums of uint8 values are integers: count them exactly
    counts = np.zeros((2, levels))
    for tile in tiles:
        sums = np.rint(81 * _box_mean(torch.from_numpy(tile.ndsm)[None].float(), 9)[0].numpy()).astype(np.int64)
        for row, c in enumerate((cls, other)):
            counts[row] += np.bincount(sums[tile.label == c], minlength=levels)
    if not counts.sum(1).all():
        return float("nan")
    below = np.cumsum(counts, 1) / counts.sum(1, keepdims=True)  # share of each class at or below each level
    # a threshold right of each level: "cls below, other above" is right for (below_cls + 1 - below_other) / 2
    # of each class on average; "cls above" for one minus that
    accuracy = 0.5 * (below[0] + 1 - below[1])
    return float(max(accuracy.max(), 1 - accuracy.min()))


def _print_probe(splits, pixels, seed):
    for split in ("train", "test"):
        if isinstance(splits[split], DataError):
            raise splits[split]
    train, test = splits["train"], splits["test"]
    start = time.perf_counter()
    results = probe(train, test, pixels, seed)
    names = ("imp. surface", "building", "low veg.", "tree", "car")
    print(f"probe F1 (%) on {len(test)} test tiles, fitted on {pixels} pixels of {len(train)} training tiles")
    print(f"{'inputs':<11}" + "".join(f"{name:>13}" for name in names) + f"{'mF1':>8}")
    for inputs, f1 in results.items():
        scores = [f1[c] for c in CLASSES[:5]]
        cells = "".join(f"{'-' if s is None else f'{s:.1f}':>13}" for s in scores)
        print(f"{inputs:<11}{cells}{np.nanmean([np.nan if s is None else s for s in scores]):>8.1f}")
    tiles = train + test
    print("one threshold on the 9 x 9 mean NDSM, balanced accuracy: "
          f"low veg. vs imp. surface {ndsm_threshold_accuracy(tiles, _LOW_VEGETATION, _IMPERVIOUS):.3f}, "
          f"car vs imp. surface {ndsm_threshold_accuracy(tiles, _CAR, _IMPERVIOUS):.3f}, "
          f"tree vs building {ndsm_threshold_accuracy(tiles, _TREE, _BUILDING):.3f} "
          f"({time.perf_counter() - start:.0f} s)")


def _loaded_splits(root, dataset) -> dict:
    """Each split's tiles, read once (their notices said once), or the DataError that says why not."""
    dataset = dataset or detect_dataset(root)
    splits = {}
    for split in SPLITS:
        try:
            splits[split] = load_split(root, split, dataset)
        except DataError as error:
            splits[split] = error
    return splits


def _print_stats(splits):
    for split, tiles in splits.items():
        if isinstance(tiles, DataError):
            print(f"{split}: not available: {tiles}")
            continue
        heights, widths = zip(*(tile.label.shape for tile in tiles))
        pixels = sum(tile.label.size for tile in tiles)
        frequencies = ", ".join(f"{name} {f:.1%}" for name, f in zip(CLASSES, class_frequencies(tiles)))
        print(f"{split}: {len(tiles)} tiles, {min(heights)}-{max(heights)} x {min(widths)}-{max(widths)} px, "
              f"{pixels / 1e6:.1f} Mpx; {frequencies}")



def main(argv=None):
    parser = ArgumentParser(description="Class shares per split and what each modality tells about each class "
                                        "(a per-pixel probe, NDSM thresholds) for the ISPRS data in DIR.")
    parser.add_argument("data_dir", type=Path, metavar="DIR", help="an ISPRS data directory, as for train.py --data")
    parser.add_argument("--dataset", choices=DATASETS, help="default: detected from the file names")
    parser.add_argument("--pixels", type=positive_int, default=50_000, help="training pixels of the probe (default 50000)")
    parser.add_argument("--seed", type=int, default=0, help="of the training pixels and the initial weights")
    args = parser.parse_args(argv)
    splits = _loaded_splits(args.data_dir, args.dataset)
    _print_stats(splits)
    _print_probe(splits, args.pixels, args.seed)


if __name__ == "__main__":
    exit_on_user_error(main)
