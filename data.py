"""ISPRS Vaihingen and Potsdam for DIS2: reading the tiles, splits, normalisation, patches, sliding windows.

Both datasets have two modalities per tile: an IRRG orthophoto ("RGIR", bands IR, R, G) and a
normalised height model (NDSM, height above ground), plus a label image in the ISPRS colour palette.

Layout. `--data DIR` is the folder holding the ISPRS archives, as downloaded or unpacked in any of the
common ways; isprs.py finds each file by what it is (its name, else its folder, else its content) and unpacks
archives once. A tile's files:
  Vaihingen  top_mosaic_09cm_area{N}.tif              IRRG orthophoto; the same name in a labels folder, or
                                                      with palette colours only, the label
             top_mosaic_09cm_area{N}_noBoundary.tif   eroded label
             ndsm_09cm_matching_area{N}.bmp, ...      NDSM (Gerke's, heights in decimetres), else from the
             dsm_09cm_matching_area{N}.tif            DSM (see `_ndsm_from_dsm`)
  Potsdam    top_potsdam_{X}_{Y}_IRRG.tif             IRRG (or _RGBIR.tif: R, G, B, IR, of which IR, R, G are kept)
             dsm_potsdam_{XX}_{YY}_normalized_lastools.jpg   NDSM (DSM fallback: dsm_potsdam_{XX}_{YY}.tif)
             top_potsdam_{X}_{Y}_label.tif            label;  ..._label_noBoundary.tif  eroded label
Without full labels the eroded ones stand in (their boundary pixels ignored), with a notice.

The files themselves (codecs, band metadata and alpha, bit depths, nodata, georeferencing) are read by
raster.py; where one has no data, the Tile holds 0 there and a validity mask (Tile.rgir_valid, ndsm_valid).

Splits are mmsegmentation's ISPRS train/test tiles; a fixed validation holdout is taken out of "train".

Normalisation lives in one place, `normalise`: IRRG /255, then per-channel mean/std; the NDSM is kept
as uint8 (metre inputs: 10 levels per metre) and mapped with a fixed affine scaling.

The synthetic scenes of synth.py are written in exactly this layout, so everything downstream runs
without the real data; probe.py describes any such folder.
"""


import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import isprs
import raster
# The palette and the ISPRS names are isprs.py's; the commands take them from here
from isprs import CLASSES, DATASETS, IGNORE_INDEX, PALETTE, file_name, labels_to_rgb, rgb_to_labels  # noqa: F401
# Defined in raster.py, the first to use them (DataError, the NDSM's uint8 scale); the commands take them from here
from raster import NDSM_LEVELS_PER_METRE, DataError, metres_to_uint8

SPLITS = ("train", "val", "test")


def exit_on_user_error(main):
    """Call main(); on DataError print 'error: <message>' (one line, to stderr) and sys.exit(2). No traceback."""
    try:
        main()
    except DataError as error:
        print("error: " + one_line(error), file=sys.stderr)
        sys.exit(2)


def one_line(error):
    """A user error's message on one line, as every command prints it."""
    return " ".join(str(error).splitlines())


@dataclass
class Tile:
    """One ISPRS tile, uint8 throughout (a 6000 x 6000 Potsdam tile takes 216 MB)."""

    name: str  # the ISPRS tile id, e.g. "area1" (Vaihingen) or "2_10" (Potsdam)
    rgir: np.ndarray  # (H, W, 3) uint8, bands IR, R, G (the IRRG order)
    ndsm: np.ndarray  # (H, W) uint8 height (the ISPRS 8-bit NDSM; metre inputs at NDSM_LEVELS_PER_METRE)
    label: np.ndarray  # (H, W) uint8 class ids 0..5
    label_eroded: np.ndarray | None  # (H, W) uint8, IGNORE_INDEX on the boundary; None if the file is absent
    # Where a file has no data (raster._validity), its pixels are 0 and these say where: (H, W) bool, False
    # there; None where it has data everywhere, as the ISPRS tiles do. Training and evaluation ignore them.
    rgir_valid: np.ndarray | None = None
    ndsm_valid: np.ndarray | None = None  # after the DSM fallback, where the DSM has data
    labels: str = "full"  # "eroded" where only the eroded label was found: then `label` is it too


# ---- The classes ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ClassTable:
    """The classes a model predicts, as evaluate.py scores and shows them and predict.py writes them: the ISPRS
    ones below, or one's own from its classes.json (own_data.class_table)."""

    names: tuple  # class id -> name
    columns: tuple  # the table's header of each scored class
    scored: tuple  # the names averaged into mF1 and mIoU
    beside: tuple  # the names reported beside the means, in none (ISPRS: clutter)
    values: np.ndarray  # (256,) uint8 class id -> the value predict.py writes; 255 (no data) stays 255
    colours: np.ndarray  # (256, 3) uint8 class id -> its colour in the maps; black past the classes

    def colour_table(self) -> np.ndarray:
        """(3, 256) uint16 the TIFF colour table of a label map as predict.py writes it: each class's colour at
        its value, black elsewhere (NODATA_LABEL among them), 16 bits a channel."""
        table = np.zeros((256, 3), np.uint16)
        table[self.values[: len(self.names)]] = self.colours[: len(self.names)]
        return table.T * 257


ISPRS_CLASSES = ClassTable(CLASSES, ("Imp. Surface", "Building", "Low Veg.", "Tree", "Car"), CLASSES[:5], ("clutter",),
                           np.arange(256, dtype=np.uint8), labels_to_rgb(np.arange(256)))


# ---- Reading the files --------------------------------------------------------------------


def detect_dataset(root) -> str:
    """"vaihingen" or "potsdam", by the image files found below root."""
    return isprs.detect(*isprs.listing(root))


def _notify(notices: list[str]):
    for notice in notices:
        print(notice)


def _read_rgir(path: Path, rgbir: bool) -> raster.Layer:
    """An ISPRS orthophoto, whose bands its name gives: IRRG (IR, R, G) or RGBIR (R, G, B, IR)."""
    layer = raster.read_orthophoto(path, raster.ORTHOPHOTO_BANDS[4 if rgbir else 3])
    _notify(layer.notices)
    return layer


def _read_ndsm(path: Path) -> raster.Layer:
    layer = raster.read_height_model(path)
    _notify(layer.notices)
    return layer


def _read_dsm(path: Path) -> raster.Layer:
    """The NDSM derived from a DSM (_ndsm_from_dsm); invalid, and 0, where the DSM has no data."""
    dsm, notices = raster.read_surface_model(path)
    _notify(notices)
    heights = _ndsm_from_dsm(dsm)
    valid = ~np.isnan(heights)
    return raster.Layer(metres_to_uint8(np.where(valid, heights, 0)), None if valid.all() else valid, [], notices)


# The DSM fallback estimates the ground from a grid of low percentiles of GROUND_BLOCK-pixel blocks:
# a grey opening (min then max filter) of GROUND_OPENING blocks removes anything narrower, such as
# buildings and trees, but keeps planar slopes away from the tile edges; the grid is then smoothed
# (3 x 3 mean) and upsampled bilinearly. Wider roofs, curved terrain and slopes at the edges make it
# wrong, hence the warning. Pixels without data (NaN) take no part: a block's percentile is that of its
# heights, and a block with none takes the lowest ground around it before the opening.
GROUND_BLOCK = 32
GROUND_PERCENTILE = 5
GROUND_OPENING = 7  # blocks: 224 px, about 20 m at Vaihingen's 9 cm and 11 m at Potsdam's 5 cm


def _ndsm_from_dsm(dsm: np.ndarray) -> np.ndarray:
    """Height above an estimated ground, in metres, from a (H, W) float DSM in metres; NaN where it is NaN."""
    height, width = dsm.shape
    if np.isnan(dsm).all():
        return dsm.copy()
    padded = np.pad(dsm, ((0, -height % GROUND_BLOCK), (0, -width % GROUND_BLOCK)), mode="edge")
    rows, cols = padded.shape[0] // GROUND_BLOCK, padded.shape[1] // GROUND_BLOCK
    blocks = padded.reshape(rows, GROUND_BLOCK, cols, GROUND_BLOCK).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    ground = _low_percentile(blocks)
    while np.isnan(ground).any():  # blocks without data: the lowest ground next to them, spreading inwards
        ground = np.where(np.isnan(ground), _neighbourhood(ground, np.fmin.reduce, 3), ground)
    ground = _neighbourhood(_neighbourhood(ground, np.min, GROUND_OPENING), np.max, GROUND_OPENING)
    ground = _neighbourhood(ground, np.mean, 3)
    ground = F.interpolate(torch.from_numpy(ground.astype(np.float32))[None, None], size=padded.shape, mode="bilinear")
    return np.clip(dsm - ground[0, 0, :height, :width].numpy(), 0, None)


def _low_percentile(blocks: np.ndarray) -> np.ndarray:
    """(rows, cols) the GROUND_PERCENTILE-th percentile of the heights of each block that are not NaN, linear
    between the nearest ranks as np.percentile's; NaN for a block without any."""
    ordered = np.sort(blocks, axis=-1)  # NaN (no data) sorts last
    top = np.maximum(np.count_nonzero(~np.isnan(blocks), axis=-1) - 1, 0)  # rank of the highest height
    rank = top * (GROUND_PERCENTILE / 100)
    below = np.floor(rank).astype(np.intp)
    low = np.take_along_axis(ordered, below[..., None], -1)[..., 0]
    high = np.take_along_axis(ordered, np.minimum(below + 1, top)[..., None], -1)[..., 0]
    return low + (high - low) * (rank - below)


def _neighbourhood(grid: np.ndarray, reduce, size: int) -> np.ndarray:
    """`reduce` over the size x size neighbourhood of every cell of a small grid (edges repeated)."""
    padded = np.pad(grid, size // 2, mode="edge")
    rows, cols = grid.shape
    views = [padded[dy : dy + rows, dx : dx + cols] for dy in range(size) for dx in range(size)]
    return reduce(np.stack(views), axis=0)


def _read_label(path: Path) -> np.ndarray:
    colours, notices = raster.read_bands(path)
    _notify(notices)
    return rgb_to_labels(colours, path)


def _no_label(root: Path, dataset: str, name: str, image: Path) -> DataError:
    where = " in any folder but the orthophotos'" if dataset == "vaihingen" else ""
    return DataError(
        f"{image}: no label found (expected {file_name(dataset, 'label', name)}{where}, or the eroded "
        f"{file_name(dataset, 'eroded', name)}); add {isprs.ARCHIVES[dataset]['label']} to {root}, "
        "as downloaded or unpacked"
    )


def _label_as_image(image: Path) -> DataError:
    return DataError(f"{image}: holds only label colours, a label, not an orthophoto; move it into a folder "
                     "named labels/ (or gts/, ground_truth/) and put the orthophoto in top/")


def _read_tile(root: Path, index: dict, dataset: str, name: str) -> tuple[Tile, bool]:
    """One tile, checked; the flag says whether its NDSM had to be derived from the DSM. Without a full
    label the eroded one is the label (Tile.labels says so)."""
    rgbir = name not in index["image"]
    image = root / (index["rgbir"] if rgbir else index["image"])[name]
    if name not in index["label"] and name not in index["eroded"]:
        raise _label_as_image(image) if isprs.is_label_file(image) else _no_label(root, dataset, name, image)
    if name not in index["ndsm"] and name not in index["dsm"]:
        raise DataError(
            f"{image}: no NDSM found (expected e.g. {file_name(dataset, 'ndsm', name)} in a folder or with a "
            f"name containing 'ndsm' or 'normalized'); add {isprs.ARCHIVES[dataset]['ndsm']} to {root}"
        )
    rgir = _read_rgir(image, rgbir)
    if isprs.looks_like_label(rgir.pixels):
        raise _label_as_image(image)
    from_dsm = name not in index["ndsm"]
    ndsm_path = root / (index["dsm"] if from_dsm else index["ndsm"])[name]
    ndsm = _read_dsm(ndsm_path) if from_dsm else _read_ndsm(ndsm_path)
    label_path = root / index["label"][name] if name in index["label"] else None
    eroded_path = root / index["eroded"][name] if name in index["eroded"] else None
    eroded = _read_label(eroded_path) if eroded_path else None
    label = _read_label(label_path) if label_path else eroded
    height, width = rgir.pixels.shape[:2]
    for array, path in ((ndsm.pixels, ndsm_path), (label, label_path), (eroded, eroded_path)):
        if path is not None and array.shape[:2] != (height, width):
            raise DataError(
                f"{path}: size {array.shape[0]} x {array.shape[1]} differs from {image} "
                f"({height} x {width}); all files of a tile must have the same size"
            )
    without_data = [f"{100 * (1 - layer.valid.mean()):.1f}% of the {modality}"
                    for modality, layer in (("orthophoto", rgir), ("NDSM", ndsm)) if layer.valid is not None]
    if without_data:
        print(f"notice: {name}: {' and '.join(without_data)} without data, stored as 0 "
              "(Tile.rgir_valid and Tile.ndsm_valid say where)")
    labels = "full" if label_path else "eroded"
    return Tile(name, rgir.pixels, ndsm.pixels, label, eroded, rgir.valid, ndsm.valid, labels), from_dsm


# ---- Splits ---------------------------------------------------------------------------------

# mmsegmentation's ISPRS splits; VAL_HOLDOUT is taken out of the training tiles for model selection
# (Vaihingen: the four validation areas of Audebert et al.'s "Deep Learning for Earth Observation").
_ISPRS_TRAIN = {
    "vaihingen": [f"area{n}" for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)],
    "potsdam": "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_10 6_11 6_12 6_7 6_8 6_9 "
    "7_10 7_11 7_12 7_7 7_8 7_9".split(),
}
_ISPRS_TEST = {
    "vaihingen": [f"area{n}" for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)],
    "potsdam": "2_13 2_14 3_13 3_14 4_13 4_14 4_15 5_13 5_14 5_15 6_13 6_14 6_15 7_13".split(),
}
VAL_HOLDOUT = {"vaihingen": ["area5", "area15", "area21", "area30"], "potsdam": ["2_12", "4_10", "6_8", "7_11"]}


def known_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return dataset


def split_names(dataset: str, split: str) -> list[str]:
    """Tile names of a split; "train" excludes the validation holdout."""
    dataset = known_dataset(dataset)
    if split == "train":
        return [name for name in _ISPRS_TRAIN[dataset] if name not in VAL_HOLDOUT[dataset]]
    if split == "val":
        return list(VAL_HOLDOUT[dataset])
    if split == "test":
        return list(_ISPRS_TEST[dataset])
    raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def load_split(root, split, dataset=None) -> list[Tile]:
    """Find, read and check the tiles of a split; tiles absent from root are skipped with a notice."""
    root, dataset, index = isprs.find(root, known_dataset(dataset) if dataset is not None else None)
    names = split_names(dataset, split)
    present = [name for name in names if name in index["image"] or name in index["rgbir"]]
    rgb_only = [name for name in names if name in index["rgb"] and name not in present]
    if not present and rgb_only:
        isprs.refuse_rgb_only(root, rgb_only)
    if not present:
        raise DataError(
            f"{root}: none of the {len(names)} {dataset} {split} tiles found "
            f"(e.g. {file_name(dataset, 'image', names[0])})"
        )
    missing = [name for name in names if name not in present]
    if missing:
        print(f"notice: {dataset} {split}: {len(missing)} of {len(names)} tiles not found, skipped: "
              + " ".join(missing) + (f" (RGB only, no infrared: {' '.join(rgb_only)})" if rgb_only else ""))
    tiles, derived = [], []
    for name in tqdm(present, desc=f"reading {dataset} {split}", unit="tile", leave=False, disable=None):
        tile, from_dsm = _read_tile(root, index, dataset, name)
        tiles.append(tile)
        if from_dsm:
            derived.append(name)
    if derived:
        print(f"warning: no NDSM for {' '.join(derived)}: derived from the DSM by subtracting an estimated "
              "ground, an approximation; use the ISPRS NDSM for comparable results")
    eroded = [tile.name for tile in tiles if tile.labels == "eroded"]
    if eroded:
        print(f"notice: {dataset} {split}: no full labels for {' '.join(eroded)}: their eroded labels are used, "
              "boundary pixels ignored")
    return tiles


def summarise_splits(root, dataset=None):
    """Print, per split, the tiles found, their labels (full, eroded, none) and their NDSM (file, or estimated
    from the DSM), from the file names alone; and a notice when the test split has no labels, before a
    training that could not be evaluated."""
    root, dataset, index = isprs.find(root, dataset)
    for split in SPLITS:
        names = [name for name in split_names(dataset, split) if name in index["image"] or name in index["rgbir"]]
        labels = {"full": sum(name in index["label"] for name in names)}
        labels["eroded"] = sum(name in index["eroded"] and name not in index["label"] for name in names)
        labels["none"] = len(names) - labels["full"] - labels["eroded"]
        files = sum(name in index["ndsm"] for name in names)
        estimated = sum(name in index["dsm"] and name not in index["ndsm"] for name in names)
        print(f"{dataset} {split}: {len(names)} tiles; labels: " + ", ".join(f"{count} {kind}" for kind, count in
              labels.items() if count) + f"; NDSM: {files} from files" + (f", {estimated} estimated from the DSM"
                                                                          if estimated else ""))
        if split == "test" and labels["none"] == len(names):
            print(f"notice: the test split has {'no labels' if names else 'no tiles'}: evaluation will need them "
                  f"({isprs.ARCHIVES[dataset]['label']} or {isprs.ARCHIVES[dataset]['eroded']})")


def class_frequencies(tiles, num_classes=len(CLASSES)) -> np.ndarray:
    """(num_classes,) float64 fraction of labelled pixels per class over the tiles (for class weights)."""
    counts = sum(np.bincount(tile.label.ravel(), minlength=256)[:num_classes] for tile in tiles)
    return counts / max(counts.sum(), 1)


# ---- Normalisation: the one place, used at training and evaluation --------------------------

# IRRG: /255, then the ImageNet mean/std per channel, as mmsegmentation's ISPRS configs do
# (the encoders are trained from scratch, so any fixed centring works; these keep us comparable).
RGIR_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
RGIR_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# NDSM: uint8 (NDSM_LEVELS_PER_METRE levels per metre for metre inputs, the ISPRS NDSM jpgs as they
# are), then /255 and a fixed shift and scale: the mean and std of the synthetic scenes, so ground is
# about -0.7 and 10 m about 1.3. The scale of the ISPRS jpgs is not documented; on them the values
# are not unit-variance, but they are the same at training and evaluation.
NDSM_MEAN, NDSM_STD = 0.14, 0.19


def normalise(rgir: np.ndarray | None, ndsm: np.ndarray | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """uint8 (..., H, W, 3) IRRG and (..., H, W) NDSM (numpy arrays or CPU tensors) -> float32
    (..., 3, H, W) and (..., 1, H, W). One's own rasters are normalised when read (own_data.py): float32
    (..., H, W, B) and (..., H, W, C) only move their band axis. None, a missing modality, stays None."""
    rgir, ndsm = (x if x is None or isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
                  for x in (rgir, ndsm))
    if all(x.dtype == torch.float32 for x in (rgir, ndsm) if x is not None):
        return tuple(None if x is None else x.movedim(-1, -3).contiguous() for x in (rgir, ndsm))
    ok = (rgir is None or (rgir.dtype == torch.uint8 and rgir.shape[-1] == 3)) and (ndsm is None or ndsm.dtype == torch.uint8)
    if not ok or (rgir is not None and ndsm is not None and rgir.shape[:-1] != ndsm.shape):
        raise ValueError(f"normalise expects uint8 (..., H, W, 3) and (..., H, W), got "
                         f"{getattr(rgir, 'shape', None)} and {getattr(ndsm, 'shape', None)}")
    if rgir is not None:
        rgir = ((rgir.movedim(-1, -3).float() / 255 - RGIR_MEAN) / RGIR_STD).contiguous()  # (..., 3, H, W)
    if ndsm is not None:
        ndsm = (ndsm.unsqueeze(-3).float() / 255 - NDSM_MEAN) / NDSM_STD  # (..., 1, H, W)
    return rgir, ndsm


# ---- Patches for training, sliding windows for evaluation -----------------------------------


class PatchDataset(torch.utils.data.Dataset):
    """Random `patch` x `patch` training samples cut from uint8 tiles and normalised on the fly.

    Sample i: a tile drawn with probability proportional to its area, a uniform position, and one
    random flip/rotation applied alike to both modalities and the label. All of it comes from
    np.random.default_rng((seed, epoch, i)), so a sample depends on nothing else: not the worker
    count, not the order, not a resumption. DataLoader workers copy the dataset when an iterator is
    created, so call set_epoch before iterating over an epoch.
    """

    def __init__(self, tiles, patch=512, samples_per_epoch=1000, seed=0):
        if not tiles:
            raise DataError("no tiles to cut patches from")
        self.tiles = [tile for tile in tiles if min(tile.label.shape) >= patch]
        if not self.tiles:
            fits = max(min(tile.label.shape) for tile in tiles)
            raise DataError(f"patch size {patch} is larger than every tile (at most {fits} fits); use a smaller patch")
        if len(self.tiles) < len(tiles):
            small = " ".join(tile.name for tile in tiles if min(tile.label.shape) < patch)
            print(f"notice: tiles smaller than the {patch} px patch are not sampled: {small}")
        areas = np.array([tile.label.size for tile in self.tiles], np.float64)
        self.weights = areas / areas.sum()
        self.patch, self.samples_per_epoch, self.seed, self.epoch = patch, samples_per_epoch, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.samples_per_epoch

    def __getitem__(self, i):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        tile = self.tiles[rng.choice(len(self.tiles), p=self.weights)]
        p = self.patch
        y, x = rng.integers(tile.label.shape[0] - p + 1), rng.integers(tile.label.shape[1] - p + 1)
        turns, flip_x, flip_y = rng.integers(4), rng.integers(2), rng.integers(2)

        def augment(array):  # the same crop, rotation and flips for every array of the sample
            array = np.rot90(array[y : y + p, x : x + p], turns)
            array = array[:, ::-1] if flip_x else array
            return np.ascontiguousarray(array[::-1] if flip_y else array)

        rgir, ndsm = normalise(augment(tile.rgir), augment(tile.ndsm))  # (3, p, p), (1, p, p)
        return rgir, ndsm, torch.from_numpy(augment(tile.label).astype(np.int64))  # label (p, p)


def sliding_windows(height, width, window, overlap) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of `window`-sized windows covering height x width; neighbours overlap
    by at least `overlap`, the last window touches the far edge, and a side shorter than `window`
    has the single start 0 (the caller pads, see pad_to_window)."""
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")

    def starts(size):
        return [0] if size <= window else [*range(0, size - window, window - overlap), size - window]

    return [(y, x) for y in starts(height) for x in starts(width)]


def pad_to_window(array, window) -> np.ndarray:
    """Pad an (H, W, ...) array at the bottom/right so both sides are >= window (reflect; edge when
    a side is too short to reflect); the caller crops the result back to H x W."""
    pad_y, pad_x = max(0, window - array.shape[0]), max(0, window - array.shape[1])
    if pad_y == pad_x == 0:
        return array
    widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (array.ndim - 2)
    reflectable = pad_y < array.shape[0] and pad_x < array.shape[1]
    return np.pad(array, widths, mode="reflect" if reflectable else "edge")



# ---- Command line ---------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the user-error convention of exit_on_user_error: one line 'error: ...', status 2."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

def refuse_moved(argv, moved):
    """A flag or command that moved to another script answers with one line naming
    the new command (DataError, exit 2). `moved`: flag or word -> that command."""
    for token in sys.argv[1:] if argv is None else argv:
        flag = token.split("=", 1)[0]
        if flag in moved:
            raise DataError(f"{flag} has moved: use `{moved[flag]}` (see README.md)")


MOVED = {"synth": "python synth.py DIR --tiles N --size PX", "stats": "python probe.py DIR",
         "probe": "python probe.py DIR"}


def main(argv=None):
    """data.py is a module; its former commands name their new homes."""
    refuse_moved((sys.argv[1:] if argv is None else argv)[:1], MOVED)
    raise DataError("data.py is a module, not a command: write synthetic tiles with `python synth.py DIR`, "
                    "describe a dataset with `python probe.py DIR`")


if __name__ == "__main__":
    exit_on_user_error(main)
