"""ISPRS Vaihingen and Potsdam for DIS2: reading the tiles, splits, normalisation, patches, and synthetic scenes.

Both datasets have two modalities per tile: an IRRG orthophoto ("RGIR", bands IR, R, G) and a
normalised height model (NDSM, height above ground), plus a label image in the ISPRS colour palette.

Layout. `--data DIR` is the folder where the ISPRS archives were unpacked, as they are. Files are
found by their ISPRS names anywhere below it (`_classify` holds the rules):
  Vaihingen  top_mosaic_09cm_area{N}.tif              IRRG (any folder but a ground-truth one)
             top_mosaic_09cm_area{N}.tif              label, in a folder whose name contains "gts" or "ground_truth"
             top_mosaic_09cm_area{N}_noBoundary.tif   eroded label (optional)
             *area{N}*.jpg|tif|png                    NDSM, if its name or folder has "ndsm" or "normali[sz]ed"
             dsm_09cm_matching_area{N}.tif            DSM, used only when no NDSM exists (see `_ndsm_from_dsm`)
  Potsdam    top_potsdam_{X}_{Y}_IRRG.tif             IRRG (or _RGBIR.tif: R, G, B, IR, of which IR, R, G are kept)
             dsm_potsdam_{XX}_{YY}_normalized_lastools.jpg   NDSM (DSM fallback: dsm_potsdam_{XX}_{YY}.tif)
             top_potsdam_{X}_{Y}_label.tif            label;  ..._label_noBoundary.tif  eroded label (optional)

Splits are mmsegmentation's ISPRS train/test tiles; a fixed validation holdout is taken out of "train".

Normalisation lives in one place, `normalise`: IRRG /255, then per-channel mean/std; the NDSM is kept
as uint8 (metre inputs: 10 levels per metre) and mapped with a fixed affine scaling.

Synthetic scenes (`synthesize`, `python data.py synth DIR`) are written in exactly the real layout, so
everything downstream runs without the real data. Each modality is drawn to carry what it carries in
the real data (docs/synthetic_benchmark.md; `python data.py probe DIR` measures it). The NDSM is what
dense image matching makes of the scene: lawns and roads both at 0 m, hedges and shrubs (0.5-2 m) in
the low vegetation, trees as high as the buildings, cars mostly lost, edges smeared over about a metre,
holes, spikes, noise; alone it finds roofs and crowns but hardly tells lawns or cars from roads. In the
IRRG vegetation is bright in infrared except in shadows, which keep little of it, and some roofs (not
most) have the roads' colours; alone it finds nearly everything but those roofs and the cars.
"""

import argparse
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

# ---- Classes and palette --------------------------------------------------------------------

CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
PALETTE = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], np.uint8
)  # index = class id; black (0, 0, 0) marks the boundary pixels of the eroded labels
IGNORE_INDEX = 255
DATASETS = ("vaihingen", "potsdam")
SPLITS = ("train", "val", "test")


class DataError(Exception):
    """A problem with the user's input; its message is one line naming the file and what is wrong (and what to do).

    Errors go to stderr (exit_on_user_error); notices and warnings (skipped tiles, the DSM fallback) to stdout.
    """


def exit_on_user_error(main):
    """Call main(); on DataError print 'error: <message>' (one line, to stderr) and sys.exit(2). No traceback."""
    try:
        main()
    except DataError as error:
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        sys.exit(2)


@dataclass
class Tile:
    """One ISPRS tile, uint8 throughout (a 6000 x 6000 Potsdam tile takes 216 MB)."""

    name: str  # the ISPRS tile id, e.g. "area1" (Vaihingen) or "2_10" (Potsdam)
    rgir: np.ndarray  # (H, W, 3) uint8, bands IR, R, G (the IRRG order)
    ndsm: np.ndarray  # (H, W) uint8 height (the ISPRS 8-bit NDSM; metre inputs at NDSM_LEVELS_PER_METRE)
    label: np.ndarray  # (H, W) uint8 class ids 0..5
    label_eroded: np.ndarray | None  # (H, W) uint8, IGNORE_INDEX on the boundary; None if the file is absent


# ---- Labels: palette colours <-> class ids --------------------------------------------------

# Every palette channel is exactly 0 or 255, so one bit per channel identifies a colour; looking up
# those three bits converts a 6000 x 6000 label in a fraction of a second.
_OFF_PALETTE = 254


def _colour_bits(rgb):
    return (rgb[..., 0] & 4) | (rgb[..., 1] & 2) | (rgb[..., 2] & 1)


_ID_OF_BITS = np.full(8, _OFF_PALETTE, np.uint8)
_ID_OF_BITS[_colour_bits(PALETTE)] = np.arange(len(PALETTE))
_ID_OF_BITS[0] = IGNORE_INDEX  # black
_RGB_OF_ID = np.zeros((256, 3), np.uint8)
_RGB_OF_ID[: len(PALETTE)] = PALETTE


def rgb_to_labels(rgb: np.ndarray, path="") -> np.ndarray:
    """(H, W, 3) uint8 palette colours -> (H, W) uint8 class ids; black -> IGNORE_INDEX."""
    where = path or "label image"
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"{where}: expected a 3-band uint8 colour label, got shape {rgb.shape} of {rgb.dtype}")
    labels = _ID_OF_BITS[_colour_bits(rgb)]
    # uint8 wrap-around: v + 1 is 1 for 0 and 0 for 255, > 1 for every other value
    red, green, blue = (rgb[..., channel] + np.uint8(1) > 1 for channel in range(3))
    off_palette = (labels == _OFF_PALETTE) | red | green | blue
    if off_palette.any():
        codes = rgb[off_palette].astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        values, counts = np.unique(codes, return_counts=True)
        top = int(values[counts.argmax()])
        colour = (top >> 16, (top >> 8) & 255, top & 255)
        raise DataError(
            f"{where}: {int(off_palette.sum())} pixels have colours outside the ISPRS palette, most often "
            f"RGB {colour} ({int(counts.max())} pixels); labels must use only the six class colours and black"
        )
    return labels


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours; IGNORE_INDEX (and any id > 5) -> black."""
    return _RGB_OF_ID[labels]


# ---- Finding and reading files --------------------------------------------------------------

NDSM_LEVELS_PER_METRE = 10  # metre heights -> uint8: 0.1 m steps, clipped at 25.5 m (above all but a few roofs)
_GROUND_TRUTH_FOLDER = re.compile(r"gts|ground.?truth", re.IGNORECASE)
_NDSM_HINT = re.compile(r"ndsm|normali[sz]ed", re.IGNORECASE)

# (kind, pattern of the file name); the first match wins, so specific names come before general ones
_PATTERNS = {
    "vaihingen": (
        ("image", r"top_mosaic_09cm_area(\d+)\.tif"),  # a label instead when inside a ground-truth folder
        ("eroded", r"top_mosaic_09cm_area(\d+)_noBoundary\.tif"),
        ("dsm", r"dsm_09cm_matching_area(\d+)\.tif"),
        ("ndsm", r".*(?<![a-z])area(\d+)(?!\d).*\.(?:jpe?g|tiff?|png)"),  # "area1" is not "area11"
    ),
    "potsdam": (
        ("image", r"top_potsdam_(\d+)_(\d+)_IRRG\.tif"),
        ("rgbir", r"top_potsdam_(\d+)_(\d+)_RGBIR\.tif"),
        ("label", r"top_potsdam_(\d+)_(\d+)_label\.tif"),
        ("eroded", r"top_potsdam_(\d+)_(\d+)_label_noBoundary\.tif"),
        ("dsm", r"dsm_potsdam_(\d+)_(\d+)\.tif"),
        ("ndsm", r"dsm_potsdam_(\d+)_(\d+)_normali[sz]ed(?:_lastools)?\.(?:jpe?g|tiff?|png)"),
    ),
}


def _file_name(dataset: str, kind: str, name: str) -> str:
    """The ISPRS file name of one kind of file of a tile; used for messages and by the generator."""
    if dataset == "vaihingen":
        return {
            "image": f"top_mosaic_09cm_{name}.tif",
            "label": f"top_mosaic_09cm_{name}.tif",
            "eroded": f"top_mosaic_09cm_{name}_noBoundary.tif",
            "ndsm": f"dsm_09cm_matching_{name}_normalized.jpg",
        }[kind]
    x, y = (int(part) for part in name.split("_"))
    return {
        "image": f"top_potsdam_{name}_IRRG.tif",
        "label": f"top_potsdam_{name}_label.tif",
        "eroded": f"top_potsdam_{name}_label_noBoundary.tif",
        "ndsm": f"dsm_potsdam_{x:02d}_{y:02d}_normalized_lastools.jpg",
    }[kind]


def _classify(relative: Path, dataset: str) -> tuple[str, str] | None:
    """(kind, tile name) of a file given its path relative to the data root, or None if it is not the dataset's."""
    for kind, pattern in _PATTERNS[dataset]:
        match = re.fullmatch(pattern, relative.name, re.IGNORECASE)
        if match is None:
            continue
        if kind == "ndsm" and not _NDSM_HINT.search(str(relative)):
            return None
        if kind == "image" and dataset == "vaihingen":
            if any(_GROUND_TRUTH_FOLDER.search(folder) for folder in relative.parts[:-1]):
                kind = "label"
        numbers = [int(group) for group in match.groups()]
        return kind, (f"area{numbers[0]}" if dataset == "vaihingen" else f"{numbers[0]}_{numbers[1]}")
    return None


def _listing(root) -> tuple[Path, list[Path]]:
    """The root and all files below it, relative to it and sorted (so duplicates resolve the same way every time)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found; point --data at the unpacked ISPRS archives")
    return root, sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())


def _index(files: list[Path], dataset: str) -> dict[str, dict[str, Path]]:
    """kind -> tile name -> relative path; when a file occurs twice, the first in sorted order is used."""
    index = defaultdict(dict)
    for relative in files:
        found = _classify(relative, dataset)
        if found is not None:
            index[found[0]].setdefault(found[1], relative)
    return index


def _detect(root: Path, files: list[Path]) -> str:
    present = [dataset for dataset in DATASETS if {"image", "rgbir"} & _index(files, dataset).keys()]
    if not present:
        raise DataError(
            f"{root}: no ISPRS Vaihingen or Potsdam images found (e.g. top_mosaic_09cm_area1.tif, "
            f"top_potsdam_2_10_IRRG.tif); for synthetic data run: python data.py synth {root}"
        )
    if len(present) > 1:
        raise DataError(f"{root}: holds both Vaihingen and Potsdam images; name the dataset (--dataset)")
    return present[0]


def detect_dataset(root) -> str:
    """"vaihingen" or "potsdam", by the image files found below root."""
    return _detect(*_listing(root))


def _read_array(path: Path) -> np.ndarray:
    """Pixels of a TIFF (tifffile) or JPEG/PNG (pillow): (H, W) or (H, W, bands)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.array(image)
    except MemoryError:
        raise
    except Exception as error:  # tifffile and pillow raise many types (ValueError, OSError, zlib.error, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        message = f"{path}: cannot be read ({reason}); the file is truncated or corrupt, unpack it again"
        raise DataError(message) from error
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # a planar TIFF stores bands first
    return array


def _irrg(array: np.ndarray, path: Path, bands: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 IR, R, G from an image of one of the allowed band counts: 3 (IRRG) or 4 (R, G, B, IR)."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in bands:
        expected = " or ".join(f"{count}-band" for count in bands)
        raise DataError(f"{path}: expected a {expected} uint8 image, got shape {array.shape} of {array.dtype}")
    return np.ascontiguousarray(array[..., [3, 0, 1]]) if array.shape[2] == 4 else array  # R, G, B, IR -> IR, R, G


def _read_rgir(path: Path, rgbir: bool) -> np.ndarray:
    return _irrg(_read_array(path), path, (4,) if rgbir else (3,))


def _metres_to_uint8(metres: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(metres * NDSM_LEVELS_PER_METRE), 0, 255).astype(np.uint8)


def _read_ndsm(path: Path) -> np.ndarray:
    """(H, W) uint8 NDSM; a uint8 file is taken as it is, a float file as metres."""
    array = _read_array(path)
    if array.ndim == 3 and array.shape[2] == 3 and (array == array[..., :1]).all():
        array = array[..., 0]  # a grey image saved as RGB
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not (array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: expected a 1-band uint8 or float NDSM, got shape {array.shape} of {array.dtype}")
    return array if array.dtype == np.uint8 else _metres_to_uint8(np.nan_to_num(array))


# GeoTIFF georeferencing: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory and its
# double and ASCII parameters. Copied unchanged onto a prediction, they make it overlay its input in a GIS.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)


def _georeference(path: Path) -> list[tuple]:
    """The GeoTIFF tags of a file already read by _read_array, as tifffile `extratags`; none for JPEG/PNG."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return []
    with tifffile.TiffFile(path) as tiff:
        return [(tag.code, tag.dtype, tag.count, tag.value, True) for tag in tiff.pages.first.tags
                if tag.code in GEOTIFF_TAGS]


def read_orthophoto(path) -> tuple[np.ndarray, list[tuple]]:
    """A new area's orthophoto for prediction: (H, W, 3) uint8 IR, R, G from 3 bands (IRRG) or 4 bands
    (R, G, B, IR, as Potsdam's RGBIR), and its GeoTIFF tags."""
    path = Path(path)
    return _irrg(_read_array(path), path, (3, 4)), _georeference(path)


def read_height_model(path) -> tuple[np.ndarray, list[tuple]]:
    """A new area's NDSM for prediction, (H, W) uint8 as _read_ndsm makes it, and its GeoTIFF tags."""
    path = Path(path)
    return _read_ndsm(path), _georeference(path)


def _read_dsm(path: Path) -> np.ndarray:
    array = _read_array(path)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: expected a 1-band float DSM in metres, got shape {array.shape} of {array.dtype}")
    return _metres_to_uint8(_ndsm_from_dsm(np.nan_to_num(array.astype(np.float32))))


# The DSM fallback estimates the ground from a grid of low percentiles of GROUND_BLOCK-pixel blocks:
# a grey opening (min then max filter) of GROUND_OPENING blocks removes anything narrower, such as
# buildings and trees, but keeps planar slopes away from the tile edges; the grid is then smoothed
# (3 x 3 mean) and upsampled bilinearly. Wider roofs, curved terrain and slopes at the edges make it
# wrong, hence the warning.
GROUND_BLOCK = 32
GROUND_PERCENTILE = 5
GROUND_OPENING = 7  # blocks: 224 px, about 20 m at Vaihingen's 9 cm and 11 m at Potsdam's 5 cm


def _ndsm_from_dsm(dsm: np.ndarray) -> np.ndarray:
    """Height above an estimated ground, in metres, from a (H, W) float DSM in metres."""
    height, width = dsm.shape
    padded = np.pad(dsm, ((0, -height % GROUND_BLOCK), (0, -width % GROUND_BLOCK)), mode="edge")
    rows, cols = padded.shape[0] // GROUND_BLOCK, padded.shape[1] // GROUND_BLOCK
    blocks = padded.reshape(rows, GROUND_BLOCK, cols, GROUND_BLOCK).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    ground = np.percentile(blocks, GROUND_PERCENTILE, axis=-1)
    ground = _neighbourhood(_neighbourhood(ground, np.min, GROUND_OPENING), np.max, GROUND_OPENING)
    ground = _neighbourhood(ground, np.mean, 3)
    ground = F.interpolate(torch.from_numpy(ground.astype(np.float32))[None, None], size=padded.shape, mode="bilinear")
    return np.clip(dsm - ground[0, 0, :height, :width].numpy(), 0, None)


def _neighbourhood(grid: np.ndarray, reduce, size: int) -> np.ndarray:
    """`reduce` over the size x size neighbourhood of every cell of a small grid (edges repeated)."""
    padded = np.pad(grid, size // 2, mode="edge")
    rows, cols = grid.shape
    views = [padded[dy : dy + rows, dx : dx + cols] for dy in range(size) for dx in range(size)]
    return reduce(np.stack(views), axis=0)


def _read_label(path: Path) -> np.ndarray:
    return rgb_to_labels(_read_array(path), path)


def _read_tile(root: Path, index: dict, dataset: str, name: str) -> tuple[Tile, bool]:
    """One tile, checked; the flag says whether its NDSM had to be derived from the DSM."""
    rgbir = name not in index["image"]
    image = root / (index["rgbir"] if rgbir else index["image"])[name]
    if name not in index["label"]:
        raise DataError(
            f"{image}: no label found (expected {_file_name(dataset, 'label', name)}"
            + (" in a folder whose name contains 'gts' or 'ground_truth'" if dataset == "vaihingen" else "")
            + "); unpack the ground-truth archive under the data directory"
        )
    if name not in index["ndsm"] and name not in index["dsm"]:
        raise DataError(
            f"{image}: no NDSM found (expected e.g. {_file_name(dataset, 'ndsm', name)} in a folder or with a "
            "name containing 'ndsm' or 'normalized'); unpack the NDSM archive under the data directory"
        )
    rgir = _read_rgir(image, rgbir)
    from_dsm = name not in index["ndsm"]
    ndsm_path = root / (index["dsm"] if from_dsm else index["ndsm"])[name]
    ndsm = _read_dsm(ndsm_path) if from_dsm else _read_ndsm(ndsm_path)
    label_path = root / index["label"][name]
    eroded_path = root / index["eroded"][name] if name in index["eroded"] else None
    label = _read_label(label_path)
    eroded = _read_label(eroded_path) if eroded_path else None
    for array, path in ((ndsm, ndsm_path), (label, label_path), (eroded, eroded_path)):
        if array is not None and array.shape[:2] != rgir.shape[:2]:
            raise DataError(
                f"{path}: size {array.shape[0]} x {array.shape[1]} differs from {image} "
                f"({rgir.shape[0]} x {rgir.shape[1]}); all files of a tile must have the same size"
            )
    return Tile(name, rgir, ndsm, label, eroded), from_dsm


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


def _known_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return dataset


def split_names(dataset: str, split: str) -> list[str]:
    """Tile names of a split; "train" excludes the validation holdout."""
    dataset = _known_dataset(dataset)
    if split == "train":
        return [name for name in _ISPRS_TRAIN[dataset] if name not in VAL_HOLDOUT[dataset]]
    if split == "val":
        return list(VAL_HOLDOUT[dataset])
    if split == "test":
        return list(_ISPRS_TEST[dataset])
    raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def load_split(root, split, dataset=None) -> list[Tile]:
    """Find, read and check the tiles of a split; tiles absent from root are skipped with a notice."""
    root, files = _listing(root)
    dataset = _known_dataset(dataset) if dataset is not None else _detect(root, files)
    names = split_names(dataset, split)
    index = _index(files, dataset)
    present = [name for name in names if name in index["image"] or name in index["rgbir"]]
    if not present:
        raise DataError(
            f"{root}: none of the {len(names)} {dataset} {split} tiles found "
            f"(e.g. {_file_name(dataset, 'image', names[0])})"
        )
    missing = [name for name in names if name not in present]
    if missing:
        print(f"notice: {dataset} {split}: {len(missing)} of {len(names)} tiles not found, skipped: "
              + " ".join(missing))
    tiles, derived = [], []
    for name in tqdm(present, desc=f"reading {dataset} {split}", unit="tile", leave=False, disable=None):
        tile, from_dsm = _read_tile(root, index, dataset, name)
        tiles.append(tile)
        if from_dsm:
            derived.append(name)
    if derived:
        print(f"warning: no NDSM for {' '.join(derived)}: derived from the DSM by subtracting an estimated "
              "ground, an approximation; use the ISPRS NDSM for comparable results")
    return tiles


def class_frequencies(tiles) -> np.ndarray:
    """(6,) float64 fraction of labelled pixels per class over the tiles (for class weights)."""
    counts = sum(np.bincount(tile.label.ravel(), minlength=256)[: len(CLASSES)] for tile in tiles)
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


def normalise(rgir: np.ndarray, ndsm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (..., H, W, 3) IRRG and (..., H, W) NDSM (numpy arrays or CPU tensors) -> float32
    (..., 3, H, W) and (..., 1, H, W)."""
    rgir, ndsm = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)) for x in (rgir, ndsm))
    if not rgir.dtype == ndsm.dtype == torch.uint8 or rgir.shape[-1] != 3 or rgir.shape[:-1] != ndsm.shape:
        raise ValueError(f"normalise expects uint8 (..., H, W, 3) and (..., H, W), got {rgir.shape} and {ndsm.shape}")
    rgir = (rgir.movedim(-1, -3).float() / 255 - RGIR_MEAN) / RGIR_STD  # (..., 3, H, W)
    ndsm = (ndsm.unsqueeze(-3).float() / 255 - NDSM_MEAN) / NDSM_STD  # (..., 1, H, W)
    return rgir.contiguous(), ndsm


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


# ---- Synthetic scenes -----------------------------------------------------------------------

SYNTH_PX_PER_M = 10  # both datasets are drawn at 0.1 m per pixel (the real ones: 9 cm and 5 cm)
BOUNDARY_RADIUS = 3  # eroded labels: pixels about this close to another class are black, as in ISPRS
_IMPERVIOUS, _BUILDING, _LOW_VEGETATION, _TREE, _CAR, _CLUTTER = range(len(CLASSES))
_FLAT, _DOME, _GABLE = range(3)
_SYNTHETIC_FOLDERS = {
    "vaihingen": {
        "image": "ISPRS_semantic_labeling_Vaihingen/top",
        "ndsm": "ISPRS_semantic_labeling_Vaihingen/ndsm",
        "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE",
        "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
    },
    "potsdam": {"image": "3_Ortho_IRRG", "ndsm": "1_DSM_normalisation", "label": "5_Labels_all",
                "eroded": "5_Labels_all_noBoundary"},
}
_CAR_COLOURS = np.array(  # RGB: white, black, silver, grey, red, blue, green, beige
    [[225, 225, 225], [35, 35, 40], [165, 168, 172], [105, 108, 112], [175, 35, 30], [35, 55, 140],
     [40, 95, 60], [200, 185, 150]], np.float32)
_CAR_COLOUR_SHARE = [0.2, 0.2, 0.2, 0.2, 0.07, 0.07, 0.03, 0.03]  # mostly the greys of the roads
# Shadows are lit by the sky alone, which has little infrared: what is left of each band (IR, R, G)
# in a full shadow. Vegetation loses the infrared brightness that tells it from roads in the sun.
_SHADOW_LIGHT = np.array([0.2, 0.35, 0.4], np.float32)


@dataclass
class _Thing:
    """One object of a scene, in pixels; heights in metres, colours as (IR, R, G)."""

    layer: int  # painter's order: 0 ground surfaces, 1 cars, clutter, hedges and shrubs, 2 trees, 3 buildings
    cls: int
    outline: list  # polygon vertices, or the two corners of a crown's bounding box
    colour: tuple
    top: float = 0.0  # height; the ridge of a gable roof, the crown top of a tree
    eave: float = 0.0  # gable roofs: height at the eaves
    shape: int = _FLAT
    centre: tuple = (0.0, 0.0)
    normal: tuple = (0.0, 0.0)  # gable roofs: unit vector across the ridge
    half: float = 1.0  # domes: crown radius; gable roofs: half the width across the ridge (pixels)
    texture: float = 0.03  # amplitude of the brightness texture
    matched: float = 1.0  # the fraction of its height that dense matching recovers (cars: partly lost)


def _grey(rng, low, high, infrared=0.95):
    value = rng.uniform(low, high)
    return infrared * value, value, value  # asphalt and concrete reflect slightly less infrared


def _lawn(rng):
    return rng.uniform(165, 215), rng.uniform(85, 115), rng.uniform(95, 125)


def _leaves(rng):
    return rng.uniform(160, 215), rng.uniform(60, 95), rng.uniform(70, 105)  # infrared overlaps the lawns'


def _roof_colour(rng):
    kind = rng.choice(4, p=[0.15, 0.45, 0.22, 0.18])
    if kind == 0:
        return _grey(rng, 95, 165)  # concrete and bitumen: the roads' greys
    if kind == 1:
        return rng.uniform(150, 190), rng.uniform(120, 160), rng.uniform(70, 100)  # red tiles
    return _grey(rng, 50, 85, infrared=0.8) if kind == 2 else _grey(rng, 180, 220, infrared=1.05)  # slate, white


def _odd_colour(rng):
    return tuple(rng.permutation([rng.uniform(20, 70), rng.uniform(90, 160), rng.uniform(190, 250)]))


def _overlaps(box, other, gap):
    return box[0] < other[2] + gap and other[0] < box[2] + gap and box[1] < other[3] + gap and other[1] < box[3] + gap


class _City:
    """A street grid at a random angle. Objects are placed in metres (u along one street direction,
    v along the other) and stored in pixels."""

    def __init__(self, rng, height, width):
        self.rng, self.height, self.width = rng, height, width
        angle = rng.uniform(0, np.pi / 2)
        self.u_axis = np.array([np.cos(angle), np.sin(angle)])
        self.v_axis = np.array([-np.sin(angle), np.cos(angle)])
        self.centre = np.array([width, height]) / 2
        self.things = []

    def xy(self, u, v):
        return self.centre + (u * self.u_axis + v * self.v_axis) * SYNTH_PX_PER_M

    def corners(self, u0, v0, u1, v1):
        return [tuple(self.xy(u, v)) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]

    def visible(self, u0, v0, u1, v1):
        xs, ys = np.array(self.corners(u0, v0, u1, v1)).T
        return xs.max() >= 0 and xs.min() < self.width and ys.max() >= 0 and ys.min() < self.height

    def add(self, layer, cls, box, colour, **details):
        self.things.append(_Thing(layer, cls, self.corners(*box), colour, **details))

    def street(self, position, width, verge, along_u, length):
        """A street with 1.5 m sidewalks, some with a grass verge between kerb and sidewalk, and cars
        parked along both kerbs."""
        def box(s0, s1, c0, c1):  # along-street extent s, across-street extent c -> (u0, v0, u1, v1)
            return (s0, c0, s1, c1) if along_u else (c0, s0, c1, s1)

        rng, half = self.rng, width / 2
        self.add(0, _IMPERVIOUS, box(-length, length, position - half - verge - 1.5, position + half + verge + 1.5),
                 _grey(rng, 125, 175))
        if verge:  # with a row of trees on each, whose crowns hang over the road and the cars parked there
            self.add(0, _LOW_VEGETATION, box(-length, length, position - half - verge, position + half + verge),
                     _lawn(rng), texture=0.06)
            for middle in (position - half - verge / 2, position + half + verge / 2):
                for s in np.arange(-length + rng.uniform(0, 20), length, rng.uniform(14, 24)):
                    if self.visible(*box(s - 6, s + 6, middle - 6, middle + 6)):
                        self.tree(*((s, middle) if along_u else (middle, s)))
        self.add(0, _IMPERVIOUS, box(-length, length, position - half, position + half), _grey(rng, 90, 145))
        for s in np.arange(-length, length, 6.0):  # the dashed centre line
            self.add(0, _IMPERVIOUS, box(s, s + 3, position - 0.1, position + 0.1), _grey(rng, 210, 235))
        for kerb in (position - half + 1.2, position + half - 1.2):
            for s in np.arange(-length, length, 6.0):  # 6 m parking slots, 15% taken
                if rng.random() < 0.15 and self.visible(*box(s, s + 6, kerb - 1, kerb + 1)):
                    self.car(*((s + 3, kerb) if along_u else (kerb, s + 3)), along_u)

    def car(self, u, v, along_u):
        rng = self.rng
        length, width = rng.uniform(3.9, 5.0) / 2, rng.uniform(1.7, 2.0) / 2
        du, dv = (length, width) if along_u else (width, length)
        box = (u - du, v - dv, u + du, v + dv)
        r, g, b = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=_CAR_COLOUR_SHARE)] * rng.uniform(0.85, 1.1)
        # dense matching loses much of a car: it is small, and parked cars come and go between the images
        self.add(1, _CAR, box, (0.5 * (r + g + b) / 3 + 0.5 * r + 15, r, g), top=rng.uniform(1.3, 1.9), texture=0.05,
                 matched=rng.uniform(0.15, 0.7))

    def building(self, u0, v0, u1, v1, flat_roof=False):
        rng = self.rng
        colour = _roof_colour(rng)
        if flat_roof or rng.random() < 0.4:  # 3-20 m, mostly 5-10 m
            top = 3 + 17 * rng.beta(1.6, 3)
            self.add(3, _BUILDING, (u0, v0, u1, v1), colour, top=top, texture=0.05)  # gravel, stains
            for _ in range(int((u1 - u0) * (v1 - v0) / 250)):  # vents, skylights, plant rooms: what roads lack
                w, d = rng.uniform(1, 4, size=2)
                a, b = rng.uniform(u0 + 1, u1 - 1 - w), rng.uniform(v0 + 1, v1 - 1 - d)
                self.add(3, _BUILDING, (a, b, a + w, b + d), _grey(rng, 60, 230), top=top + rng.uniform(0.3, 2))
            return
        ridge_along_u = u1 - u0 >= v1 - v0  # the ridge runs along the longer side
        normal = self.v_axis if ridge_along_u else self.u_axis
        half = (v1 - v0 if ridge_along_u else u1 - u0) / 2 * SYNTH_PX_PER_M
        eave = rng.uniform(3, 9)
        self.add(3, _BUILDING, (u0, v0, u1, v1), colour, top=eave + rng.uniform(2, 5), eave=eave, shape=_GABLE,
                 centre=tuple(self.xy((u0 + u1) / 2, (v0 + v1) / 2)), normal=tuple(normal), half=half,
                 texture=0.1)  # rows of tiles or slates

    def dome(self, u, v, radius, cls, top, layer):
        """A round crown (trees) or bush (shrubs): leaves' colours, a strong texture."""
        (x, y), r = self.xy(u, v), radius * SYNTH_PX_PER_M
        self.things.append(_Thing(layer, cls, [(x - r, y - r), (x + r, y + r)], _leaves(self.rng), shape=_DOME,
                                  centre=(x, y), half=r, top=top, texture=0.22))

    def tree(self, u, v):
        """A crown 2-6 m in radius and 4.4-15 m high: as high as the buildings around it."""
        radius = self.rng.uniform(2, 6)
        self.dome(u, v, radius, _TREE, 2 + 1.2 * radius + self.rng.uniform(0, 6), layer=2)

    def trees(self, block, count, avoid=()):
        u0, v0, u1, v1 = block
        for _ in range(count):
            u, v = self.rng.uniform(u0, u1), self.rng.uniform(v0, v1)
            if not any(_overlaps((u, v, u, v), box, gap=1) for box in avoid):
                self.tree(u, v)

    def shrubs(self, block, count, avoid=()):
        """Low vegetation that is not flat: bushes 0.5-1.5 m in radius and 0.5-2 m high."""
        u0, v0, u1, v1 = block
        for _ in range(count):
            u, v = self.rng.uniform(u0, u1), self.rng.uniform(v0, v1)
            if not any(_overlaps((u, v, u, v), box, gap=1.5) for box in avoid):
                self.dome(u, v, self.rng.uniform(0.5, 1.5), _LOW_VEGETATION, self.rng.uniform(0.5, 2), layer=1)

    def hedges(self, block):
        """Hedges 0.8-1.5 m wide and 0.5-2 m high along some sides of a block, with gaps."""
        rng = self.rng
        u0, v0, u1, v1 = block
        for side in range(4):
            if rng.random() < 0.5:
                continue
            width, top = rng.uniform(0.8, 1.5), rng.uniform(0.5, 2)
            start, end = (u0, u1) if side < 2 else (v0, v1)
            edge = [v0 + 0.5, v1 - 0.5 - width, u0 + 0.5, u1 - 0.5 - width][side]
            for s in np.arange(start + rng.uniform(0, 8), end - 4, 12.0):
                stop = min(end, s + rng.uniform(4, 11))
                box = (s, edge, stop, edge + width) if side < 2 else (edge, s, edge + width, stop)
                self.add(1, _LOW_VEGETATION, box, _leaves(rng), top=top, texture=0.22)

    def clutter(self, box, raised):
        rng = self.rng
        if raised:  # containers, trailers, heaps
            self.add(1, _CLUTTER, box, _odd_colour(rng), top=rng.uniform(0.5, 3), texture=0.08)
        else:  # bare soil, water, odd ground surfaces
            colour = [(130, 150, 115), (25, 45, 70), _odd_colour(rng)][rng.integers(3)]
            self.add(0, _CLUTTER, box, colour, texture=0.1)

    def residential(self, u0, v0, u1, v1):
        """Houses with driveways (some with a car) and terraces, hedges, shrubs, garden clutter and trees."""
        rng, houses = self.rng, []
        for _ in range(int((u1 - u0) * (v1 - v0) / 12)):
            size = rng.uniform(14, 32), rng.uniform(10, 20)
            w, d = size if rng.random() < 0.5 else size[::-1]
            if u1 - u0 < w + 6 or v1 - v0 < d + 6:
                continue
            a, b = rng.uniform(u0 + 3, u1 - 3 - w), rng.uniform(v0 + 3, v1 - 3 - d)
            house = (a, b, a + w, b + d)
            if any(_overlaps(house, other, gap=3) for other in houses):
                continue
            houses.append(house)
            self.building(*house)
            self.driveway(house, (u0, v0, u1, v1))
            if rng.random() < 0.5:
                self.terrace(house)
            if rng.random() < 0.25:
                cu, cv = rng.uniform(u0, u1 - 2), rng.uniform(v0, v1 - 2)
                self.clutter((cu, cv, cu + rng.uniform(1, 3), cv + rng.uniform(1, 3)), raised=True)
        self.hedges((u0, v0, u1, v1))
        self.shrubs((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 150), avoid=houses)
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 50), avoid=houses)

    def terrace(self, house):
        """A paved terrace 2.5-5 m deep along one side of a house: pavement amid the lawns."""
        rng = self.rng
        a, b, c, d = house
        depth, side = rng.uniform(2.5, 5), rng.integers(4)
        box = [(a, b - depth, c, b), (a, d, c, d + depth), (a - depth, b, a, d), (c, b, c + depth, d)][side]
        self.add(0, _IMPERVIOUS, box, _grey(rng, 120, 185))

    def driveway(self, house, block):
        """A 3 m paved strip from the house to the nearest edge of its block."""
        rng = self.rng
        gaps = [house[0] - block[0], block[2] - house[2], house[1] - block[1], block[3] - house[3]]
        side = int(np.argmin(gaps))
        along_u = side < 2
        low, high = (house[1], house[3]) if along_u else (house[0], house[2])
        across = rng.uniform(low + 1.5, high - 1.5)
        start, end = [(block[0], house[0]), (house[2], block[2]), (block[1], house[1]), (house[3], block[3])][side]
        box = (start, across - 1.5, end, across + 1.5) if along_u else (across - 1.5, start, across + 1.5, end)
        self.add(0, _IMPERVIOUS, box, _grey(rng, 125, 175))
        if end - start > 5.5 and rng.random() < 0.3:
            middle = (start + end) / 2
            self.car(*((middle, across) if along_u else (across, middle)), along_u)

    def commercial(self, u0, v0, u1, v1):
        """One large flat-roofed building on a paved lot with lawn borders, and a row of parked cars."""
        rng = self.rng
        self.add(0, _IMPERVIOUS, (u0, v0, u1, v1), _grey(rng, 110, 170))
        for side in range(4):  # lawn borders: flat ground that is not pavement
            if rng.random() < 0.4:
                w = rng.uniform(2, 5)
                box = [(u0, v0 + 5, u0 + w, v1), (u1 - w, v0 + 5, u1, v1), (u0, v0, u1, v0 + w),
                       (u0, v1 - w, u1, v1)][side]
                self.add(0, _LOW_VEGETATION, box, _lawn(rng), texture=0.06)
                self.shrubs(box, int((box[2] - box[0]) * (box[3] - box[1]) / 40))
        margin = rng.uniform(4, 8)
        if u1 - u0 > 2 * margin + 10 and v1 - v0 > 2 * margin + 10:
            self.building(u0 + margin, v0 + margin, u1 - margin, v1 - margin - rng.uniform(0, (v1 - v0) / 4), True)
        for u in np.arange(u0 + 2, u1 - 2, 2.7):
            if rng.random() < 0.5:
                self.car(u, v0 + 3, along_u=False)

    def park(self, u0, v0, u1, v1):
        """Trees on lawn, with shrubs and hedges, crossed by footpaths; or a paved square with trees."""
        rng = self.rng
        if rng.random() < 0.3:
            self.add(0, _IMPERVIOUS, (u0, v0, u1, v1), _grey(rng, 130, 185))
            self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 150))
            return
        for _ in range(rng.integers(1, 4)):
            path, w = rng.uniform(u0, u1), rng.uniform(1, 2)
            self.add(0, _IMPERVIOUS, (path - w, v0, path + w, v1), _grey(rng, 120, 170))
        self.hedges((u0, v0, u1, v1))
        self.shrubs((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 100))
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 45))

    def parking(self, u0, v0, u1, v1):
        """A car park: rows of perpendicular parking bays, some with grass between, trees around."""
        rng = self.rng
        self.add(0, _IMPERVIOUS, (u0 + 2, v0 + 2, u1 - 2, v1 - 2), _grey(rng, 100, 160))
        for v in np.arange(v0 + 5, v1 - 5, 8.0):
            if rng.random() < 0.5:
                self.add(0, _LOW_VEGETATION, (u0 + 3, v + 3, u1 - 3, v + 5), _lawn(rng), texture=0.06)
            for u in np.arange(u0 + 4, u1 - 4, 2.7):
                if rng.random() < 0.4:
                    self.car(u, v, along_u=False)
        self.trees((u0, v0, u1, v1), int((u1 - u0 + v1 - v0) / 8), avoid=[(u0 + 3, v0 + 3, u1 - 3, v1 - 3)])

    def yard(self, u0, v0, u1, v1):
        """An odd ground surface (clutter) with containers and a few trees."""
        rng = self.rng
        a, b = rng.uniform(u0, (u0 + u1) / 2), rng.uniform(v0, (v0 + v1) / 2)
        self.clutter((a, b, a + rng.uniform(0.2, 0.5) * (u1 - u0), b + rng.uniform(0.2, 0.5) * (v1 - v0)), raised=False)
        for _ in range(rng.integers(2, 6)):
            cu, cv = rng.uniform(u0, u1 - 6), rng.uniform(v0, v1 - 6)
            self.clutter((cu, cv, cu + 2.5, cv + 6) if rng.random() < 0.5 else (cu, cv, cu + 6, cv + 2.5), raised=True)
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 400))

    def block(self, u0, v0, u1, v1):
        kinds = (self.residential, self.commercial, self.park, self.parking, self.yard)
        kinds[self.rng.choice(len(kinds), p=[0.5, 0.32, 0.06, 0.05, 0.07])](u0, v0, u1, v1)


def _street_lines(rng, half):
    """(centre, width, verge) in metres of parallel streets, 70-120 m apart, covering [-half, half];
    30% have a 1.5-3 m grass verge on each side."""
    lines, position = [], -half - rng.uniform(0, 70)
    while position < half + 70:
        lines.append((position, rng.uniform(5, 9), rng.uniform(1.5, 3) if rng.random() < 0.3 else 0.0))
        position += rng.uniform(70, 120)
    return lines


def _layout(rng, height, width) -> list[_Thing]:
    """The objects of one scene in painter's order."""
    city = _City(rng, height, width)
    half = np.hypot(height, width) / 2 / SYNTH_PX_PER_M
    across_u, across_v = _street_lines(rng, half), _street_lines(rng, half)
    for position, street_width, verge in across_u:
        city.street(position, street_width, verge, along_u=False, length=half + 10)
    for position, street_width, verge in across_v:
        city.street(position, street_width, verge, along_u=True, length=half + 10)
    for (ua, wa, ga), (ub, wb, gb) in zip(across_u, across_u[1:]):
        for (va, wc, gc), (vb, wd, gd) in zip(across_v, across_v[1:]):
            block = (ua + wa / 2 + ga + 1.5, va + wc / 2 + gc + 1.5, ub - wb / 2 - gb - 1.5, vb - wd / 2 - gd - 1.5)
            if city.visible(*block):
                city.block(*block)
    return sorted(city.things, key=lambda thing: thing.layer)


def _noise(rng, height, width, cell):
    """A smooth random field (values mostly within -1..1) with blobs about `cell` pixels across."""
    coarse = rng.standard_normal((height // cell + 3, width // cell + 3), dtype=np.float32)
    fine = F.interpolate(torch.from_numpy(coarse)[None, None], scale_factor=cell, mode="bicubic", align_corners=False)
    return fine[0, 0, :height, :width].numpy()


def _shifted(array, dy, dx):
    """out[y, x] = array[y + dy, x + dx], zero outside."""
    out = np.zeros_like(array)
    h, w = array.shape
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = array[
        max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def _shadows(metres, rng, factor=4):
    """Soft (H, W) mask in [0, 1] of the shadows cast by a random sun (35-55 degrees high), traced on a
    grid `factor` times coarser: a pixel is shaded if something towards the sun rises above its ray."""
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35, 55))
    low = metres[::factor, ::factor]
    rise = factor / SYNTH_PX_PER_M * np.tan(elevation)  # metres the ray to the sun climbs per coarse pixel
    caster = np.zeros_like(low)
    for step in range(1, int(low.max() / rise) + 1):
        dy, dx = round(step * np.sin(azimuth)), round(step * np.cos(azimuth))
        if abs(dy) >= low.shape[0] or abs(dx) >= low.shape[1]:
            break
        np.maximum(caster, _shifted(low, dy, dx) - step * rise, out=caster)
    shadow = torch.from_numpy((caster > low + 0.5).astype(np.float32))[None, None]
    soft = F.interpolate(shadow, scale_factor=factor, mode="bilinear", align_corners=False)
    return soft[0, 0, : metres.shape[0], : metres.shape[1]].numpy()


def _max_filter(array, radius):
    """Maximum over the (2 radius + 1)-pixel square around each pixel (edges: over the part inside),
    one axis at a time; on a boolean mask, a dilation."""
    for axis in (0, 1):
        grown = array.copy()
        target, source = np.moveaxis(grown, axis, 0), np.moveaxis(array, axis, 0)
        for step in range(1, radius + 1):
            np.maximum(target[step:], source[:-step], out=target[step:])
            np.maximum(target[:-step], source[step:], out=target[:-step])
        array = grown
    return array


def _dense_matching(metres, rng):
    """The NDSM, in metres, that dense image matching makes of the true heights: edges that wander in
    and out by up to 0.4 m; holes (failed matches, filled in with the ground) and spikes of 2-10 m
    (false matches), each in about 1% of the pixels; matching noise; everything smeared (Gaussian,
    sigma 0.25 m, so a roof edge rises over about a metre); and a ground that is off by a few
    decimetres here and there. Lawns and roads, both at 0 m, come out alike."""
    height, width = metres.shape
    wander = _noise(rng, height, width, cell=15) > 0
    metres = np.where(wander, _max_filter(metres, 4), -_max_filter(-metres, 4))
    faults = _noise(rng, height, width, cell=14)
    metres = np.where(faults < -2, 0, metres) + np.where(faults > 2.2, 2 + 10 * (faults - 2.2), 0)
    metres += 0.3 * rng.standard_normal(metres.shape, dtype=np.float32)  # white, correlated by the smear
    # smeared as uint8 (PIL's blur is fast) 1 m up, so that noise below the ground is not clipped before it
    smeared = Image.fromarray(_metres_to_uint8(metres + 1)).filter(ImageFilter.GaussianBlur(2.5))
    return np.asarray(smeared, np.float32) / NDSM_LEVELS_PER_METRE - 1 + 0.3 * _noise(rng, height, width, cell=150)


def _render(things, rng, height, width):
    """Rasterise the objects: (H, W, 3) uint8 IRRG, (H, W) uint8 NDSM, (H, W) uint8 label."""
    image = Image.new("I", (width, height), 0)  # object index per pixel; 0 is the lawn underneath everything
    draw = ImageDraw.Draw(image)
    for index, thing in enumerate(things, start=1):
        (draw.ellipse if thing.shape == _DOME else draw.polygon)(thing.outline, fill=index)
    ids = np.asarray(image)
    lawn = _Thing(0, _LOW_VEGETATION, [], _lawn(rng))
    table = {field: np.array([getattr(thing, field) for thing in (lawn, *things)], np.float32)
             for field in ("cls", "shape", "colour", "top", "eave", "centre", "normal", "half", "texture", "matched")}

    label, metres = table["cls"].astype(np.uint8)[ids], table["top"][ids]
    grain = _noise(rng, height, width, cell=5)
    shade = 1 + table["texture"][ids] * grain
    shade += (ids == 0) * 0.1 * _noise(rng, height, width, cell=40)  # lawns are mowed, trodden, dried in patches
    leafy = (metres > 0) & ((label == _TREE) | (label == _LOW_VEGETATION))
    metres += leafy * 0.1 * metres * grain  # leaf clumps: bright and high
    shape = table["shape"][ids]
    ys, xs = np.nonzero(shape == _DOME)  # crowns and bushes: highest and brightest in the middle
    obj = ids[ys, xs]
    distance = np.hypot(xs - table["centre"][obj, 0], ys - table["centre"][obj, 1]) / table["half"][obj]
    profile = np.sqrt(np.clip(1 - distance**2, 0, 1))
    metres[ys, xs] *= 0.6 + 0.4 * profile
    shade[ys, xs] *= 0.8 + 0.2 * profile
    ys, xs = np.nonzero(shape == _GABLE)  # gable roofs: height falls linearly from the ridge, faces lit differently
    obj = ids[ys, xs]
    centre, normal, top, eave = table["centre"][obj], table["normal"][obj], table["top"][obj], table["eave"][obj]
    across = (xs - centre[:, 0]) * normal[:, 0] + (ys - centre[:, 1]) * normal[:, 1]
    metres[ys, xs] = top - (top - eave) * np.clip(np.abs(across) / table["half"][obj], 0, 1)
    shade[ys, xs] *= np.where(across > 0, 1.12, 0.88)

    shadow = _shadows(metres, rng)[..., None]
    colour = table["colour"][ids] * shade[..., None] * (1 - shadow * (1 - _SHADOW_LIGHT))
    colour += 3 * rng.standard_normal(colour.shape, dtype=np.float32)  # sensor noise
    rgir = Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    ndsm = _metres_to_uint8(_dense_matching(metres * table["matched"][ids], rng))
    return np.array(rgir), ndsm, label


def _erode_boundaries(label):
    """The label with IGNORE_INDEX on pixels within BOUNDARY_RADIUS of another class (square distance)."""
    border = np.zeros(label.shape, bool)  # pixels with a 4-neighbour of another class
    across_x, across_y = label[:, 1:] != label[:, :-1], label[1:] != label[:-1]
    border[:, 1:] |= across_x
    border[:, :-1] |= across_x
    border[1:] |= across_y
    border[:-1] |= across_y
    return np.where(_max_filter(border, BOUNDARY_RADIUS - 1), np.uint8(IGNORE_INDEX), label)


def _synthetic_names(dataset, count):
    """Tile names for `count` synthetic tiles: round-robin over the train, val and test lists (so
    every split has a tile from count = 3 on), skipping a list once it is used up."""
    queues = [split_names(dataset, split) for split in SPLITS]
    total = sum(map(len, queues))
    if not 1 <= count <= total:
        raise DataError(f"--tiles must be between 1 and {total} for {dataset} (the number of ISPRS tiles), got {count}")
    names = []
    while len(names) < count:
        names += [queue.pop(0) for queue in queues if queue][: count - len(names)]
    return names


def _synthetic_shape(dataset, k, size):
    """(height, width) of the k-th tile: Potsdam tiles are all square; Vaihingen tiles are `size` wide
    and 1 to 1.5 times as high, varying like the real ones (and mostly not multiples of 16)."""
    return (size, size) if dataset == "potsdam" else (size + size * (k % 5) // 8 + k % 3, size)


def synthesize(out_dir, dataset="vaihingen", tiles=6, size=1024, seed=0) -> None:
    """Write `tiles` synthetic tiles in the ISPRS layout; tile k is drawn from rng (seed, k)."""
    dataset = _known_dataset(dataset)
    if size < 16 or seed < 0:
        raise DataError(f"--size must be at least 16 and --seed not negative, got size {size}, seed {seed}")
    out_dir, folders = Path(out_dir), _SYNTHETIC_FOLDERS[dataset]
    names = _synthetic_names(dataset, tiles)
    for k, name in enumerate(tqdm(names, desc="drawing", unit="tile", leave=False, disable=None)):
        height, width = _synthetic_shape(dataset, k, size)
        rng = np.random.default_rng((seed, k))
        rgir, ndsm, label = _render(_layout(rng, height, width), rng, height, width)
        path = {kind: out_dir / folder / _file_name(dataset, kind, name) for kind, folder in folders.items()}
        for file in path.values():
            file.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path["image"], rgir, photometric="rgb")
        tifffile.imwrite(path["label"], labels_to_rgb(label), photometric="rgb", compression="zlib")
        tifffile.imwrite(path["eroded"], labels_to_rgb(_erode_boundaries(label)), photometric="rgb", compression="zlib")
        Image.fromarray(ndsm).save(path["ndsm"], quality=95)



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
    confusion = {name: torch.zeros(len(CLASSES) ** 2, dtype=torch.int64) for name in PROBE_INPUTS}
    with torch.no_grad():
        for tile in test:
            features = (probe_features(tile).flatten(2) - mean) / std  # (4, F, H*W)
            label = torch.from_numpy(tile.label.ravel().astype(np.int64))
            for name, bands in PROBE_INPUTS.items():
                predicted = models[name](features[bands].flatten(0, 1).T).argmax(1)
                confusion[name] += torch.bincount(label * len(CLASSES) + predicted, minlength=len(CLASSES) ** 2)
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


def _print_probe(root, dataset, pixels, seed):
    train, test = load_split(root, "train", dataset), load_split(root, "test", dataset)
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


def _print_stats(root, dataset):
    dataset = dataset or detect_dataset(root)
    for split in SPLITS:
        try:
            tiles = load_split(root, split, dataset)
        except DataError as error:
            print(f"{split}: not available: {error}")
            continue
        heights, widths = zip(*(tile.label.shape for tile in tiles))
        pixels = sum(tile.label.size for tile in tiles)
        frequencies = ", ".join(f"{name} {f:.1%}" for name, f in zip(CLASSES, class_frequencies(tiles)))
        print(f"{split}: {len(tiles)} tiles, {min(heights)}-{max(heights)} x {min(widths)}-{max(widths)} px, "
              f"{pixels / 1e6:.1f} Mpx; {frequencies}")


def main(argv=None):
    parser = ArgumentParser(description="ISPRS Vaihingen/Potsdam data for DIS2: synthetic scenes, statistics, probe.")
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write synthetic tiles in the ISPRS layout")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--dataset", choices=DATASETS, default="vaihingen")
    synth.add_argument("--tiles", type=positive_int, default=6, help="number of tiles (train, val, test in turn)")
    synth.add_argument("--size", type=positive_int, default=1024, help="tile width (Vaihingen: 1-1.5x as high)")
    synth.add_argument("--seed", type=int, default=0)
    stats = commands.add_parser("stats", help="print tiles, sizes and class frequencies per split")
    stats.add_argument("data_dir", type=Path)
    stats.add_argument("--dataset", choices=DATASETS, help="default: detected from the file names")
    probe_help = "print what each modality tells about each class: F1 of a per-pixel probe, NDSM thresholds"
    probe = commands.add_parser("probe", help=probe_help, description=(
        f"{probe_help}. The probe is a per-pixel classifier (a multilayer perceptron with {PROBE_HIDDEN} hidden "
        "units) on hand-crafted local features of the IRRG, the NDSM or both: each band, its mean and standard "
        f"deviation over {', '.join(map(str, PROBE_WINDOWS))} px windows. It is fitted on random pixels of the "
        "train tiles with median-frequency class weights, as in training, and scored on every pixel of the "
        "test tiles against the full labels. It takes seconds, which makes it the statistic for calibrating "
        "the synthetic scenes (docs/synthetic_benchmark.md); a network also sees shapes and context. Also "
        "printed: the balanced accuracy of the best single threshold on the 9 x 9 px mean NDSM (train and test "
        "tiles) for three pairs of classes: 0.5 means the height alone says nothing."))
    probe.add_argument("data_dir", type=Path)
    probe.add_argument("--dataset", choices=DATASETS, help="default: detected from the file names")
    probe.add_argument("--pixels", type=positive_int, default=50_000, help="training pixels (default 50000)")
    probe.add_argument("--seed", type=int, default=0, help="of the training pixels and the initial weights")
    args = parser.parse_args(argv)
    if args.command == "synth":
        start = time.perf_counter()
        synthesize(args.out_dir, args.dataset, args.tiles, args.size, args.seed)
        print(f"wrote {args.tiles} synthetic {args.dataset} tiles to {args.out_dir} "
              f"in {time.perf_counter() - start:.1f} s")
    elif args.command == "probe":
        _print_probe(args.data_dir, args.dataset, args.pixels, args.seed)
    else:
        _print_stats(args.data_dir, args.dataset)


if __name__ == "__main__":
    exit_on_user_error(main)
