"""Image files as they come: TIFF codecs, band metadata and alpha, bit depths, nodata, georeferencing.

Every image the project reads goes through `_read_raster`: a TIFF with tifffile (any compression, tiled
or striped, BigTIFF) or a JPEG/PNG with pillow, band axis last, with what the file declares about its
bands. The reader of each modality turns a file into what the model takes and says where the file has
data: an orthophoto into uint8 IR, R, G (`read_orthophoto`), a height model into the uint8 NDSM
(`read_height_model`), each a `Layer` with its validity mask; a DSM into float metres, NaN where it has
none (`read_surface_model`). data.py reads the ISPRS tiles with them, predict.py new imagery.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


class DataError(Exception):
    """A problem with the user's input; its message is one line naming the file and what is wrong (and what to do).

    Errors go to stderr (data.exit_on_user_error); notices and warnings (skipped tiles, the DSM fallback) to stdout.
    """


NDSM_LEVELS_PER_METRE = 10  # metre heights -> uint8: 0.1 m steps, clipped at 25.5 m (above all but a few roofs)


def metres_to_uint8(metres: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(metres * NDSM_LEVELS_PER_METRE), 0, 255).astype(np.uint8)


# What a file's bands are comes from the file itself, never from their count alone. TIFF ExtraSamples 1
# (associated) or 2 (unassociated alpha) and PNG's RGBA and LA modes mark alpha bands: they say where the
# image is valid, not what is there, so they are never read as colour or infrared; alpha 0 is no data.
_ALPHA_EXTRASAMPLES = (1, 2)
_ALPHA_MASKS = "its 0 marks pixels without data"  # what an orthophoto's or NDSM's alpha is for, in the notice
# Files say where they have no data in three more ways: NaN in float bands; a nodata value, which GDAL
# writes as ASCII in the TIFF tag GDAL_NODATA; and an internal transparency mask, an image of its own
# (NewSubfileType 4: the mask of the full-resolution image) that GDAL writes beside JPEG-compressed
# bands, whose lossy values cannot keep an exact nodata value.
GDAL_NODATA = 42113
_MASK_SUBFILETYPE = 4
# tifffile parses GDAL_NODATA too, as the band's type, and logs where that fails ("nan" in an integer file,
# the float32 limit in full); _nodata_value reads the tag itself and names a bad one in its one-line error.
tifffile.logger().addFilter(lambda record: "GDAL_NODATA" not in record.getMessage())
# GDAL marks float32 pixels without data with the float32 limits, whose value other tools often write as
# %g prints it, "-3.40282e+38": a number 17 float32 steps inside the limit, which those pixels do not equal.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Raster:
    """The pixels of an image file and what the file declares about its bands."""

    pixels: np.ndarray  # (H, W, S) every sample (band) of the file, alpha included; a grey image has S = 1
    alpha: list[int]  # indices of the alpha samples
    max_value: np.ndarray  # (S,) int64 largest value each integer sample may take (see _declared_maximum)
    georeference: list[tuple]  # GeoTIFF tags as tifffile `extratags`; none for JPEG/PNG
    nodata: float | None  # GDAL_NODATA's value; None where the file declares none
    mask: np.ndarray | None  # (H, W) bool internal transparency mask, False where there is no data; None: none


@dataclass
class Layer:
    """One modality of an area as the model takes it, and where its file has data."""

    pixels: np.ndarray  # (H, W, 3) uint8 IR, R, G or (H, W) uint8 NDSM; 0 where not valid
    valid: np.ndarray | None  # (H, W) bool, False where the file has no data; None: valid everywhere
    georeference: list[tuple]  # its GeoTIFF tags as tifffile `extratags`
    notices: list[str]  # what reading it noticed, a line each


def _declared_maximum(dtype: np.dtype, samples: int, path: Path, declared=None, bits=None) -> np.ndarray:
    """(samples,) the top of each sample's range: MaxSampleValue (TIFF tag 281) where the file gives one, for
    every sample or each, else that of BitsPerSample (4095 for 12-bit data packed as such), else the data
    type's full range. Zeros for float data, whose range is not declared."""
    if not np.issubdtype(dtype, np.integer):
        return np.zeros(samples, np.int64)
    largest = int(np.iinfo(dtype).max)
    if declared is None:
        declared = largest if bits is None else min(2**bits - 1, largest)
    if np.size(declared) not in (1, samples):
        raise DataError(f"{path}: its MaxSampleValue tag (281) holds {np.size(declared)} values for {samples} bands, "
                        "where one, or one per band, is expected; save the file again without the tag")
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


def _nodata_value(text, path: Path) -> float | None:
    """GDAL_NODATA's ASCII ("-9999", "nan", "-3.4028234663852886e+38") as a number."""
    try:
        return None if text is None else float(text)
    except ValueError:
        raise DataError(f"{path}: its GDAL_NODATA tag ({GDAL_NODATA}) is {text!r}, not a number; "
                        "set the nodata value again (gdal_edit.py -a_nodata VALUE)") from None


def _read_raster(path: Path) -> Raster:
    """A TIFF (tifffile; any compression, tiled or striped, BigTIFF) or JPEG/PNG (pillow), band axis last."""
    nodata = mask = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages.first  # the full-resolution image; overviews and masks come after it
                _check_codec(page, path)
                pixels = page.asarray()
                axes, samples, extra = page.axes, page.samplesperpixel, page.extrasamples
                maximum = _declared_maximum(page.dtype, samples, path, page.tags.valueof(281), page.bitspersample)
                georeference = _georeference(page)
                nodata = _nodata_value(page.tags.valueof(GDAL_NODATA), path)
                mask_page = next((p for p in tiff.pages[1:] if p.subfiletype == _MASK_SUBFILETYPE), None)
                if mask_page is not None:
                    _check_codec(mask_page, path)
                    mask = mask_page.asarray() > 0  # 1-bit (bool) or 8-bit 0/255
            pixels = np.moveaxis(pixels, axes.index("S"), -1) if "S" in axes else pixels[..., None]
            alpha = [samples - len(extra) + i for i, kind in enumerate(extra) if kind in _ALPHA_EXTRASAMPLES]
        else:
            with Image.open(path) as image:
                pixels, bands = np.array(image), image.getbands()  # bands: e.g. ("R", "G", "B", "A")
            pixels = pixels if pixels.ndim == 3 else pixels[..., None]
            alpha = [i for i, band in enumerate(bands) if band in ("A", "a")]
            maximum, georeference = _declared_maximum(pixels.dtype, len(bands), path), []
    except (DataError, MemoryError):
        raise
    except Exception as error:  # tifffile, imagecodecs and pillow raise many types (ValueError, OSError, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        message = f"{path}: cannot be read ({reason}); the file is truncated or corrupt, unpack it again"
        raise DataError(message) from error
    if pixels.ndim != 3:
        raise DataError(f"{path}: not a single 2-D image (shape {pixels.shape}); save its first image alone")
    if mask is not None and mask.shape != pixels.shape[:2]:
        raise DataError(f"{path}: its internal mask is {mask.shape[0]} x {mask.shape[1]} pixels, the image "
                        f"{pixels.shape[0]} x {pixels.shape[1]}; write the file again with a mask of its size")
    return Raster(pixels, alpha, maximum, georeference, nodata, mask)


def _band_numbers(alpha: list[int]) -> str:
    """'band 4', 'bands 4 and 5': samples as a user counts them, from 1."""
    return ("band " if len(alpha) == 1 else "bands ") + " and ".join(str(i + 1) for i in alpha)


def _data_bands(raster: Raster, path: Path, alpha: list[int], alpha_use="not used"):
    """The pixels and maxima of the samples not in `alpha`, and the notice naming those left out and what for."""
    if not alpha:
        return raster.pixels, raster.max_value, []
    keep = [i for i in range(raster.pixels.shape[-1]) if i not in alpha]
    verb = "is an alpha band" if len(alpha) == 1 else "are alpha bands"
    notice = f"notice: {path}: {_band_numbers(alpha)} {verb}, {alpha_use}"
    return raster.pixels[..., keep], raster.max_value[keep], [notice]


def _described(bands: int, alpha: list[int]) -> str:
    """'4 bands', '3 bands and alpha (band 4)': what a message says a file holds."""
    return f"{bands} band{'s' if bands != 1 else ''}" + (f" and alpha ({_band_numbers(alpha)})" if alpha else "")


def _validity(raster: Raster, bands: np.ndarray, alpha: list[int], nodata=None) -> np.ndarray | None:
    """(H, W) bool, False where the file has no data: its mask or an alpha band is 0 there, a band is NaN, or
    every band holds the nodata value (`nodata`, a flag's, else the file's GDAL_NODATA). Every band, not any:
    a dark pixel may have one band at 0, a mosaic's collar has them all. None where every pixel has data."""
    valid = np.ones(bands.shape[:2], bool) if raster.mask is None else raster.mask.copy()
    for i in alpha:
        valid &= raster.pixels[..., i] > 0
    if np.issubdtype(bands.dtype, np.floating):
        valid &= ~np.isnan(bands).any(-1)
    nodata = raster.nodata if nodata is None else nodata
    if nodata is not None and bands.dtype == np.float32 and f"{abs(nodata):g}" == f"{_FLOAT32_MAX:g}":
        nodata = math.copysign(_FLOAT32_MAX, nodata)  # a float32 limit, however rounded when it was printed
    if nodata is not None:
        everywhere = bands[..., 0] == nodata
        for i in range(1, bands.shape[-1]):  # band by band: no (H, W, B) temporary
            everywhere &= bands[..., i] == nodata
        valid &= ~everywhere
    return None if valid.all() else valid


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
    room = 255 * int(np.iinfo(bands.dtype).max) + int(maximum.max())  # above value * 255 + top // 2, and top
    wide = np.int32 if room <= np.iinfo(np.int32).max else np.int64
    scaled = np.empty(bands.shape, np.uint8)
    for i, top in enumerate(maximum.tolist()):  # band by band: the wide copy is one band's, not the image's
        band = bands[..., i].astype(wide)
        np.maximum(band, 0, out=band)  # negative values of signed data lie below the range
        band *= 255
        band += top // 2
        band //= top
        scaled[..., i] = np.minimum(band, 255)
    return scaled


def _irrg(raster: Raster, path: Path, order=None, max_value=None, nodata=None):
    """(H, W, 3) uint8 IR, R, G from an orthophoto, 0 where it has no data; where it has (_validity); and the
    notices of reading it.

    order: the names of the file's bands in order (--bands, or what an ISPRS file name says); by default
    ORTHOPHOTO_BANDS of the count of bands that are not alpha. An order that names every band of the file,
    alpha included, is taken over the alpha tags (writers, tifffile among them, tag a 4th band as alpha
    by default, IR included). max_value: the value that becomes 255 (--max-value); by default each band's
    declared maximum (_declared_maximum). nodata: the value of no data (--rgir-nodata), over the file's."""
    named_every_band = order is not None and len(order) == raster.pixels.shape[-1]
    alpha = [] if named_every_band else raster.alpha
    pixels, maximum, notices = _data_bands(raster, path, alpha, _ALPHA_MASKS)
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
    if max_value is not None and max_value > np.iinfo(pixels.dtype).max:
        raise DataError(f"--max-value {max_value}: above {np.iinfo(pixels.dtype).max}, the largest value of "
                        f"{path}'s {pixels.dtype} bands; give the value that is white in the file "
                        "(e.g. 4095 for 12-bit data)")
    valid = _validity(raster, pixels, alpha, nodata)
    picks = [names.index(band) for band in ("ir", "r", "g")]
    maximum = maximum[picks] if max_value is None else np.full(3, max_value, np.int64)
    irrg = pixels if picks == [0, 1, 2] and count == 3 else pixels[..., picks]
    irrg = _to_uint8(irrg, maximum, path)
    if valid is not None:
        irrg[~valid] = 0
    return irrg, valid, notices


def _ndsm(raster: Raster, path: Path, metres_per_unit=None, nodata=None):
    """(H, W) uint8 NDSM, 0 where it has no data; where it has (_validity); and the notices of reading it.
    With metres_per_unit (--ndsm-unit) the values times it are metres; without, a uint8 file is taken as it
    is (the ISPRS NDSMs), a float one as metres, and another integer one is refused: its unit (centimetres?
    millimetres?) is not known. nodata: the value of no data (--ndsm-nodata), over the file's."""
    pixels, _, notices = _data_bands(raster, path, raster.alpha, _ALPHA_MASKS)
    if pixels.shape[-1] == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., :1]  # a grey image saved as RGB
    dtype = pixels.dtype
    if pixels.shape[-1] != 1 or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: expected a 1-band integer or float NDSM, got "
                        f"{_described(pixels.shape[-1], raster.alpha)} of {dtype}")
    valid = _validity(raster, pixels, raster.alpha, nodata)
    heights = pixels[..., 0] if valid is None else np.where(valid, pixels[..., 0], 0)  # no NaN nor -9999 left
    if metres_per_unit is not None:
        return metres_to_uint8(heights.astype(np.float32) * np.float32(metres_per_unit)), valid, notices
    if dtype == np.uint8:
        return heights, valid, notices
    if np.issubdtype(dtype, np.floating):
        return metres_to_uint8(heights), valid, notices
    raise DataError(f"{path}: a {dtype} NDSM, whose unit is unknown; give metres per unit with predict.py "
                    "--ndsm-unit (e.g. 0.01 for centimetres), or save it as float metres")


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


SCALE_TOLERANCE = 1.5  # pixels this much larger or smaller than in training show objects at sizes never seen


def pixel_size_notice(path, tags, trained_on):
    """[a notice] when the GeoTIFF tags give a pixel size more than SCALE_TOLERANCE times off that of the
    dataset the model was trained on (9 cm Vaihingen, 5 cm Potsdam), else []: the model's priors of how
    large cars, trees and buildings are no longer hold."""
    size, trained = pixel_size(tags), PIXEL_SIZE.get(trained_on)
    if size is None or trained is None or 1 / SCALE_TOLERANCE <= size / trained <= SCALE_TOLERANCE:
        return []
    return [f"notice: {path}: pixels of {100 * size:.3g} cm, the model was trained on {100 * trained:.0f} cm "
            f"({trained_on}), so objects appear at sizes it never saw; resample the image to about "
            f"{100 * trained:.0f} cm for labels as good as in training"]


def image_size(path) -> tuple[int, int] | None:
    """(H, W) of an image file from its header alone, its pixels not decoded; None where the header does not
    read (reading the file then says why)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tiff:
                return tiff.pages.first.imagelength, tiff.pages.first.imagewidth
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # as _read_raster: tifffile and pillow raise many types
        return None


def check_same_size(rgir_path, ndsm_path):
    """Raises the one-line error of an area whose orthophoto and NDSM differ in size, read from their headers."""
    if rgir_path is None or ndsm_path is None:
        return
    sizes = image_size(rgir_path), image_size(ndsm_path)
    if None not in sizes and sizes[0] != sizes[1]:
        (rgir_height, rgir_width), (height, width) = sizes
        raise DataError(f"{ndsm_path}: size {height} x {width} differs from {rgir_path} ({rgir_height} x "
                        f"{rgir_width}); the orthophoto and the NDSM must cover the same pixels")


def read_orthophoto(path, bands=None, max_value=None, nodata=None) -> Layer:
    """A new area's orthophoto: (H, W, 3) uint8 IR, R, G and where it has data (see _irrg: `bands` is --bands,
    `max_value` --max-value, `nodata` --rgir-nodata), its GeoTIFF tags, and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    rgir, valid, notices = _irrg(raster, path, bands, max_value, nodata)
    return Layer(rgir, valid, raster.georeference, notices)


def read_height_model(path, metres_per_unit=None, nodata=None) -> Layer:
    """A new area's NDSM: (H, W) uint8 and where it has data (see _ndsm: `metres_per_unit` is --ndsm-unit,
    `nodata` --ndsm-nodata), its GeoTIFF tags, and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    ndsm, valid, notices = _ndsm(raster, path, metres_per_unit, nodata)
    return Layer(ndsm, valid, raster.georeference, notices)


def read_area(rgir_path, ndsm_path, trained_on=None, bands=None, max_value=None, metres_per_unit=None, rgir_nodata=None,
              ndsm_nodata=None, read_layers=None):
    """The modalities of a new area as Layers, pixels and where they have data (None for a missing modality),
    read as predict.py's --bands, --max-value, --ndsm-unit and nodata flags say; the GeoTIFF tags of its
    prediction: the orthophoto's, or the NDSM's if the orthophoto has none; and the notices of reading it
    (alpha bands, a modality without any data, which is then missing, and, given the checkpoint's dataset
    `trained_on`, pixel sizes far from those the model learnt). `read_layers(rgir_path, ndsm_path)`, where
    given, reads the two Layers instead (one's own rasters: own_data.read_layers)."""
    if read_layers is not None:
        rgir, ndsm = read_layers(rgir_path, ndsm_path)
    else:
        rgir = read_orthophoto(rgir_path, bands, max_value, rgir_nodata) if rgir_path else None
        ndsm = read_height_model(ndsm_path, metres_per_unit, ndsm_nodata) if ndsm_path else None
    given = {name: (path, layer) for name, path, layer in (("orthophoto", rgir_path, rgir), ("NDSM", ndsm_path, ndsm))
             if layer is not None}
    empty = [name for name, (_, layer) in given.items() if layer.valid is not None and not layer.valid.any()]
    if len(empty) == len(given):
        raise DataError(f"{' and '.join(str(given[name][0]) for name in empty)}: no pixel has data (all nodata, "
                        "masked or NaN); there is nothing to predict from")
    notices = [notice for _, layer in given.values() for notice in layer.notices]
    notices += [f"notice: {given[name][0]}: no pixel has data (all nodata, masked or NaN); predicted as if the "
                f"{name} were missing" for name in empty]
    tagged, tags = next(((path, layer.georeference) for path, layer in given.values() if layer.georeference),
                        (None, []))  # the orthophoto's first
    rgir, ndsm = (None if name in empty else layer for name, layer in (("orthophoto", rgir), ("NDSM", ndsm)))
    return rgir, ndsm, tags, notices + pixel_size_notice(tagged, tags, trained_on)


def read_surface_model(path) -> tuple[np.ndarray, list[str]]:
    """A DSM: (H, W) float32 metres, NaN where it has no data (_validity), and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    pixels, _, notices = _data_bands(raster, path, raster.alpha, _ALPHA_MASKS)
    if pixels.shape[-1] != 1 or not np.issubdtype(pixels.dtype, np.floating):
        raise DataError(f"{path}: expected a 1-band float DSM in metres, got "
                        f"{_described(pixels.shape[-1], raster.alpha)} of {pixels.dtype}")
    valid = _validity(raster, pixels, raster.alpha)
    dsm = pixels[..., 0].astype(np.float32)  # a copy
    if valid is not None:
        dsm[~valid] = np.nan
    return dsm, notices


def read_bands(path) -> tuple[np.ndarray, list[str]]:
    """(H, W, B) the bands of an image file that are not alpha (a label's colours), and the notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    pixels, _, notices = _data_bands(raster, path, raster.alpha)
    return pixels, notices


def read_raw(path, nodata=None) -> Layer:
    """One's own rasters (own_data.py): (H, W, B) every band that is not alpha, as the file holds it (any count,
    any type), where it has data (_validity; `nodata` over the file's GDAL_NODATA), its GeoTIFF tags and the
    notices of reading it."""
    path = Path(path)
    raster = _read_raster(path)
    pixels, _, notices = _data_bands(raster, path, raster.alpha, _ALPHA_MASKS)
    return Layer(pixels, _validity(raster, pixels, raster.alpha, nodata), raster.georeference, notices)


# -----------------------------------------------------------------------------
# New imagery: which files make an area

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


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


def image_pairs(rgir, ndsm):
    """(orthophoto, NDSM) paths to predict, None for a missing modality, from --rgir and
    --ndsm: two files, or two folders whose files are matched by name without suffix; and notices."""
    given = {flag: Path(path) for flag, path in (("--rgir", rgir), ("--ndsm", ndsm)) if path}
    if not given:
        raise DataError("predict.py needs --rgir ORTHOPHOTO and/or --ndsm NDSM (files or folders); "
                        "leave out only the modality that is missing")
    for flag, path in given.items():
        if not path.exists():
            raise DataError(f"{flag} {path}: not found")
    if len({path.is_dir() for path in given.values()}) > 1:
        raise DataError("--rgir and --ndsm must both be files or both be folders")
    if not next(iter(given.values())).is_dir():
        return [(given.get("--rgir"), given.get("--ndsm"))], []
    found = {flag: images_in(folder, flag) for flag, folder in given.items()}
    if "--ndsm" not in found:
        return [(path, None) for path in found["--rgir"].values()], []
    if "--rgir" not in found:
        return [(None, path) for path in found["--ndsm"].values()], []
    orthophotos, ndsms = found["--rgir"], found["--ndsm"]
    unmatched = [path for name, path in orthophotos.items() if name not in ndsms]
    if unmatched:
        raise DataError(f"{unmatched[0]}: no NDSM of the same name in {given['--ndsm']} ({len(unmatched)} orthophoto(s) "
                        "unmatched); name each NDSM as its orthophoto, or leave out --ndsm to predict without it")
    unused = sorted(set(ndsms) - set(orthophotos))
    notices = [f"notice: {len(unused)} NDSM file(s) in {given['--ndsm']} have no orthophoto of the same name, not "
               "used: " + " ".join(ndsms[name].name for name in unused)] if unused else []
    return [(path, ndsms[name]) for name, path in orthophotos.items()], notices
