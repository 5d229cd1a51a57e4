"""ISPRS Vaihingen and Potsdam for DIS2: reading the tiles, splits, normalisation, patches, sliding windows.

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

The synthetic scenes of synth.py are written in exactly this layout, so everything downstream runs
without the real data; probe.py describes any such folder.
"""


import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
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


def file_name(dataset: str, kind: str, name: str) -> str:
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


# What a file's bands are comes from the file itself, never from their count alone. TIFF ExtraSamples 1
# (associated) or 2 (unassociated alpha) and PNG's RGBA and LA modes mark alpha bands: they say where the
# image is valid, not what is there, so they are never read as colour or infrared. For now they are left
# out with a notice (the nodata/validity-mask work will use them).
_ALPHA_EXTRASAMPLES = (1, 2)


@dataclass
class Raster:
    """The pixels of an image file and what the file declares about its bands."""

    pixels: np.ndarray  # (H, W, S) every sample (band) of the file, alpha included; a grey image has S = 1
    alpha: list[int]  # indices of the alpha samples
    max_value: np.ndarray  # (S,) int64 largest value each integer sample may take (see _declared_maximum)
    georeference: list[tuple]  # GeoTIFF tags as tifffile `extratags`; none for JPEG/PNG


def _declared_maximum(dtype: np.dtype, samples: int, declared=None, bits=None) -> np.ndarray:
    """(samples,) the top of each sample's range: MaxSampleValue (TIFF tag 281) where the file gives one, else
    that of BitsPerSample (4095 for 12-bit data packed as such), else the data type's full range. Zeros for
    float data, whose range is not declared."""
    if not np.issubdtype(dtype, np.integer):
        return np.zeros(samples, np.int64)
    largest = int(np.iinfo(dtype).max)
    if declared is None:
        declared = largest if bits is None else min(2**bits - 1, largest)
    return np.broadcast_to(np.asarray(declared, np.int64), (samples,)).copy()


def _check_codec(page, path: Path):
    """A compression tifffile cannot decode is named as such, not taken for a truncated file."""
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError as error:
        codec = getattr(page.compression, "name", str(int(page.compression)))
        if "imagecodecs" in str(error):  # tifffile decodes all but DEFLATE and PackBits with imagecodecs
            raise DataError(f"{path}: {codec}-compressed, and decoding {codec} needs the imagecodecs package, which "
                            "is not installed: pip install imagecodecs (it is in requirements.txt)") from error
        raise DataError(f"{path}: {codec}-compressed (TIFF compression {int(page.compression)}), which cannot be "
                        "decoded here; save it with LZW, DEFLATE or ZSTD compression "
                        "(e.g. gdal_translate -co COMPRESS=DEFLATE)") from error


def _read_raster(path: Path) -> Raster:
    """A TIFF (tifffile; any compression, tiled or striped, BigTIFF) or JPEG/PNG (pillow), band axis last."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages.first  # the full-resolution image; overviews and masks come after it
                _check_codec(page, path)
                pixels = page.asarray()
                axes, samples, extra = page.axes, page.samplesperpixel, page.extrasamples
                maximum = _declared_maximum(page.dtype, samples, page.tags.valueof(281), page.bitspersample)
                georeference = _georeference(page)
            pixels = np.moveaxis(pixels, axes.index("S"), -1) if "S" in axes else pixels[..., None]
            alpha = [samples - len(extra) + i for i, kind in enumerate(extra) if kind in _ALPHA_EXTRASAMPLES]
        else:
            with Image.open(path) as image:
                pixels, bands = np.array(image), image.getbands()  # bands: e.g. ("R", "G", "B", "A")
            pixels = pixels if pixels.ndim == 3 else pixels[..., None]
            alpha = [i for i, band in enumerate(bands) if band in ("A", "a")]
            maximum, georeference = _declared_maximum(pixels.dtype, len(bands)), []
    except (DataError, MemoryError):
        raise
    except Exception as error:  # tifffile, imagecodecs and pillow raise many types (ValueError, OSError, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        message = f"{path}: cannot be read ({reason}); the file is truncated or corrupt, unpack it again"
        raise DataError(message) from error
    if pixels.ndim != 3:
        raise DataError(f"{path}: not a single 2-D image (shape {pixels.shape}); save its first image alone")
    return Raster(pixels, alpha, maximum, georeference)


def _band_numbers(alpha: list[int]) -> str:
    """'band 4', 'bands 4 and 5': samples as a user counts them, from 1."""
    return ("band " if len(alpha) == 1 else "bands ") + " and ".join(str(i + 1) for i in alpha)


def _data_bands(raster: Raster, path: Path, alpha: list[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The pixels and maxima of the samples not in `alpha`, and the notice naming those left out."""
    if not alpha:
        return raster.pixels, raster.max_value, []
    keep = [i for i in range(raster.pixels.shape[-1]) if i not in alpha]
    verb = "is an alpha band" if len(alpha) == 1 else "are alpha bands"
    notice = f"notice: {path}: {_band_numbers(alpha)} {verb}, not used"
    return raster.pixels[..., keep], raster.max_value[keep], [notice]


def _described(bands: int, alpha: list[int]) -> str:
    """'4 bands', '3 bands and alpha (band 4)': what a message says a file holds."""
    return f"{bands} band{'s' if bands != 1 else ''}" + (f" and alpha ({_band_numbers(alpha)})" if alpha else "")


def _notify(notices: list[str]):
    for notice in notices:
        print(notice)


# Orthophoto bands by their count (alpha bands not counted): Vaihingen's IRRG and Potsdam's RGBIR
ORTHOPHOTO_BANDS = {3: ("ir", "r", "g"), 4: ("r", "g", "b", "ir")}
BAND_NAMES = ("ir", "r", "g", "b")


def band_order(text: str) -> tuple[str, ...]:
    """--bands: an orthophoto's bands in file order, "r,g,b,ir" -> ("r", "g", "b", "ir"); IR, R and G must be there."""
    names = tuple(name.strip().lower() for name in text.split(","))
    if any(name not in BAND_NAMES for name in names) or len(set(names)) != len(names):
        raise DataError(f"--bands {text}: name each band of the file once, in order, as ir, r, g or b "
                        "(e.g. --bands r,g,b,ir)")
    if "ir" not in names:
        raise DataError(f"--bands {text}: the model needs the infrared band (it was trained on IR, R, G); "
                        "for imagery without one leave out --rgir and predict from the NDSM alone")
    if "r" not in names or "g" not in names:
        raise DataError(f"--bands {text}: the model needs the red and green bands besides infrared (IR, R, G)")
    return names


def _to_uint8(bands: np.ndarray, maximum: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, B) integer bands -> uint8 on the 0-255 the model was trained on: value * 255 / maximum, rounded to
    the nearest integer (halves up) and clipped to 0-255. Integer arithmetic makes it exact: a uint16 file that
    is 257 times an 8-bit one (65535 = 257 * 255) gives back the 8-bit values."""
    if bands.dtype == np.uint8 and (maximum == 255).all():
        return bands
    if (maximum < 1).any():
        raise DataError(f"{path}: declares a maximum value of {int(maximum.min())}; set the range with --max-value")
    wide = np.int32 if bands.dtype.itemsize <= 2 else np.int64  # room for value * 255
    scaled = np.empty(bands.shape, np.uint8)
    for i, top in enumerate(maximum.tolist()):  # band by band: the wide copy is one band's, not the image's
        band = bands[..., i].astype(wide)
        np.maximum(band, 0, out=band)  # negative values of signed data lie below the range
        band *= 255
        band += top // 2
        band //= top
        scaled[..., i] = np.minimum(band, 255)
    return scaled


def _irrg(raster: Raster, path: Path, order=None, max_value=None) -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 IR, R, G from an orthophoto, and the notices of reading it.

    order: the names of the file's bands in order (--bands, or what an ISPRS file name says); by default
    ORTHOPHOTO_BANDS of the count of bands that are not alpha. An order that names every band of the file,
    alpha included, is taken over the alpha tags (writers, tifffile among them, tag a 4th band as alpha
    by default, IR included). max_value: the value that becomes 255 (--max-value); by default each band's
    declared maximum (_declared_maximum)."""
    named_every_band = order is not None and len(order) == raster.pixels.shape[-1]
    alpha = [] if named_every_band else raster.alpha
    pixels, maximum, notices = _data_bands(raster, path, alpha)
    count = pixels.shape[-1]
    names = order or ORTHOPHOTO_BANDS.get(count)
    if names is None:
        raise DataError(f"{path}: expected a 3-band or 4-band orthophoto (IR, R, G or R, G, B, IR), found "
                        f"{_described(count, alpha)}; for other bands name their order with --bands "
                        "(e.g. --bands r,g,b,ir)")
    if len(names) != count:
        raise DataError(f"{path}: expected a {len(names)}-band image ({', '.join(names).upper()}), "
                        f"found {_described(count, alpha)}")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DataError(f"{path}: {pixels.dtype} bands; orthophotos are read as integers of any depth "
                        "(8-bit, 16-bit, ...): save it as 8- or 16-bit integers")
    picks = [names.index(band) for band in ("ir", "r", "g")]
    maximum = maximum[picks] if max_value is None else np.full(3, max_value, np.int64)
    irrg = pixels if picks == [0, 1, 2] and count == 3 else pixels[..., picks]
    return _to_uint8(irrg, maximum, path), notices


def _read_rgir(path: Path, rgbir: bool) -> np.ndarray:
    """An ISPRS orthophoto, whose bands its name gives: IRRG (IR, R, G) or RGBIR (R, G, B, IR)."""
    rgir, notices = _irrg(_read_raster(path), path, ORTHOPHOTO_BANDS[4 if rgbir else 3])
    _notify(notices)
    return rgir


def metres_to_uint8(metres: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(metres * NDSM_LEVELS_PER_METRE), 0, 255).astype(np.uint8)


def _ndsm(raster: Raster, path: Path, metres_per_unit=None) -> tuple[np.ndarray, list[str]]:
    """(H, W) uint8 NDSM and the notices of reading it. With metres_per_unit (--ndsm-unit) the values times it
    are metres; without, a uint8 file is taken as it is (the ISPRS NDSMs), a float one as metres, and another
    integer one is refused: its unit (centimetres? millimetres?) is not known."""
    pixels, _, notices = _data_bands(raster, path, raster.alpha)
    if pixels.shape[-1] == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., :1]  # a grey image saved as RGB
    dtype = pixels.dtype
    if pixels.shape[-1] != 1 or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: expected a 1-band integer or float NDSM, got "
                        f"{_described(pixels.shape[-1], raster.alpha)} of {dtype}")
    heights = pixels[..., 0]
    if metres_per_unit is not None:
        return metres_to_uint8(np.nan_to_num(heights.astype(np.float32) * np.float32(metres_per_unit))), notices
    if dtype == np.uint8:
        return heights, notices
    if np.issubdtype(dtype, np.floating):
        return metres_to_uint8(np.nan_to_num(heights)), notices
    raise DataError(f"{path}: a {dtype} NDSM, whose unit is unknown; give metres per unit with predict.py "
                    "--ndsm-unit (e.g. 0.01 for centimetres), or save it as float metres")


def _read_ndsm(path: Path) -> np.ndarray:
    ndsm, notices = _ndsm(_read_raster(path), path)
    _notify(notices)
    return ndsm


# GeoTIFF georeferencing: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory and its
# double and ASCII parameters. Copied unchanged onto a prediction, they make it overlay its input in a GIS.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)


def _georeference(page) -> list[tuple]:
    """The GeoTIFF tags of a TIFF page, as tifffile `extratags`."""
    return [(tag.code, tag.dtype, tag.count, tag.value, True) for tag in page.tags if tag.code in GEOTIFF_TAGS]


# The ground size of the training data's pixels, in metres; the model's sense of how large a car or a
# building is holds only near it.
PIXEL_SIZE = {"vaihingen": 0.09, "potsdam": 0.05}
# ProjLinearUnitsGeoKey (3076) values: EPSG's metre, foot and US survey foot, in metres
_METRES_PER_UNIT = {9001: 1.0, 9002: 0.3048, 9003: 1200 / 3937}


def pixel_size(georeference: list[tuple]) -> float | None:
    """The ground size of a pixel in metres from GeoTIFF tags: ModelPixelScale's x (tag 33550), in the linear
    unit of the GeoKeys (metres unless ProjLinearUnitsGeoKey says feet). None where the tags give no scale,
    or give it in degrees (GTModelTypeGeoKey 2, geographic) or in another unit."""
    values = {code: value for code, _, _, value, _ in georeference}
    if 33550 not in values:
        return None
    entries = values.get(34735, ())[4:]  # after the header, (key, location, count, value) per GeoKey
    keys = {entries[i]: entries[i + 3] for i in range(0, len(entries) - 3, 4) if entries[i + 1] == 0}
    if keys.get(1024) == 2:  # GTModelTypeGeoKey: geographic, the scale is in degrees
        return None
    size = values[33550][0] * _METRES_PER_UNIT.get(keys.get(3076, 9001), 0.0)  # 0: a unit not known here
    return size if size > 0 else None


def read_orthophoto(path, bands=None, max_value=None) -> tuple[np.ndarray, list[tuple], list[str]]:
    """A new area's orthophoto for prediction: (H, W, 3) uint8 IR, R, G (see _irrg: `bands` is --bands,
    `max_value` --max-value), its GeoTIFF tags, and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    rgir, notices = _irrg(raster, path, bands, max_value)
    return rgir, raster.georeference, notices


def read_height_model(path, metres_per_unit=None) -> tuple[np.ndarray, list[tuple], list[str]]:
    """A new area's NDSM for prediction: (H, W) uint8 as _ndsm makes it (`metres_per_unit` is --ndsm-unit),
    its GeoTIFF tags, and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    ndsm, notices = _ndsm(raster, path, metres_per_unit)
    return ndsm, raster.georeference, notices


def _read_dsm(path: Path) -> np.ndarray:
    raster = _read_raster(path)
    pixels, _, notices = _data_bands(raster, path, raster.alpha)
    _notify(notices)
    if pixels.shape[-1] != 1 or not np.issubdtype(pixels.dtype, np.floating):
        raise DataError(f"{path}: expected a 1-band float DSM in metres, got "
                        f"{_described(pixels.shape[-1], raster.alpha)} of {pixels.dtype}")
    return metres_to_uint8(_ndsm_from_dsm(np.nan_to_num(pixels[..., 0].astype(np.float32))))


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
    raster = _read_raster(path)
    pixels, _, notices = _data_bands(raster, path, raster.alpha)
    _notify(notices)
    return rgb_to_labels(pixels, path)


def _read_tile(root: Path, index: dict, dataset: str, name: str) -> tuple[Tile, bool]:
    """One tile, checked; the flag says whether its NDSM had to be derived from the DSM."""
    rgbir = name not in index["image"]
    image = root / (index["rgbir"] if rgbir else index["image"])[name]
    if name not in index["label"]:
        raise DataError(
            f"{image}: no label found (expected {file_name(dataset, 'label', name)}"
            + (" in a folder whose name contains 'gts' or 'ground_truth'" if dataset == "vaihingen" else "")
            + "); unpack the ground-truth archive under the data directory"
        )
    if name not in index["ndsm"] and name not in index["dsm"]:
        raise DataError(
            f"{image}: no NDSM found (expected e.g. {file_name(dataset, 'ndsm', name)} in a folder or with a "
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
    root, files = _listing(root)
    dataset = known_dataset(dataset) if dataset is not None else _detect(root, files)
    names = split_names(dataset, split)
    index = _index(files, dataset)
    present = [name for name in names if name in index["image"] or name in index["rgbir"]]
    if not present:
        raise DataError(
            f"{root}: none of the {len(names)} {dataset} {split} tiles found "
            f"(e.g. {file_name(dataset, 'image', names[0])})"
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
