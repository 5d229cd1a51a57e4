"""One's own rasters for DIS2: any co-registered optical image and height model, with one's own classes.

DIS2 needs two modalities, one of which may be missing; nothing in it is tied to ISPRS. A folder in this
layout is recognised by its classes.json (`train.py --data DIR`; docs/data.md):

    DIR/classes.json
    DIR/{train,val,test}/image/NAME.tif    the optical image: any number of bands, any depth raster.py reads
    DIR/{train,val,test}/height/NAME.tif   the height model (or another raster of 1+ bands), on the image's grid
    DIR/{train,val,test}/label/NAME.tif    single-band class values, or RGB colours

classes.json names the classes in the order of the model's outputs:

    {"classes": [{"name": "road", "value": 0}, {"name": "roof", "value": 1, "colour": [255, 0, 0]}, ...],
     "ignore": 255}

"value" is a class's value in the labels (0-254); colour labels give "colour": [r, g, b] instead, and
"ignore" as a colour too. A "colour" beside a "value" colours the maps; without one a default palette does.
"clutter": true reports a class beside the means, as ISPRS clutter, instead of in them. Label pixels with
the ignore value or without data (the label's nodata) are never trained on nor scored.

The bands and classes follow the data: the model takes as many image and height bands as the files have
(every file of a modality alike), and each band is normalised by its mean and standard deviation over the
valid pixels of the training split. The checkpoint keeps all of it (its "own_data": read_classes' dict with
the band counts and the normalisation added), so evaluate.py and predict.py read, score, colour and write as
training did. Tiles are data.Tile, their modalities float32 and already normalised (data.normalise only moves
their band axis), 0 (the mean) where a file has no data, which Tile.rgir_valid and ndsm_valid say.
"""

import colorsys
import json
from pathlib import Path

import numpy as np

import data
import raster
from data import IGNORE_INDEX, DataError

DATASET = "own"  # the checkpoint's "dataset" for one's own data
CLASSES_FILE = "classes.json"
KINDS = ("image", "height", "label")  # the folders of a split
SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
EXAMPLE = '{"classes": [{"name": "road", "value": 0}, ...], "ignore": 255}'
# The maps' colours of classes without their own: ten well-separated hues (matplotlib's "tab10"), then evenly
# spaced hues for more classes.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def holds_own_data(root) -> bool:
    return (Path(root) / CLASSES_FILE).is_file()


# ---- classes.json ---------------------------------------------------------------------------


def _colour(value, path, what):
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
        raise DataError(f"{path}: {what} {json.dumps(value)} is not a colour; write it as [r, g, b], each 0-255")
    return tuple(value)


def read_classes(root) -> dict:
    """classes.json checked: {"classes": [{"name", "value" (None for colour labels), "colour" (None: the default
    palette's), "clutter"}], "ignore": a value, a colour or None, "labels": "values" or "colours"}."""
    path = Path(root) / CLASSES_FILE
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                        f"write it as {EXAMPLE}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error}); write it as {EXAMPLE}") from None
    entries = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f'{path}: no "classes" list; write it as {EXAMPLE}')
    if len(entries) > IGNORE_INDEX - 1:
        raise DataError(f"{path}: {len(entries)} classes; at most {IGNORE_INDEX - 1} are supported")
    classes = []
    for number, entry in enumerate(entries, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise DataError(f'{path}: class {number} has no "name"; give each class a name and a "value" (or "colour")')
        if "value" not in entry and "colour" not in entry:
            raise DataError(f'{path}: class "{name}" has no "value" (its value in the labels) nor "colour" '
                            '(its colour in colour labels)')
        value = entry.get("value")
        if value is not None and not (isinstance(value, int) and 0 <= value < IGNORE_INDEX):
            raise DataError(f'{path}: class "{name}" has value {json.dumps(value)}; values are integers 0-254 '
                            "(255 is the predictions' no-data)")
        colour = _colour(entry["colour"], path, f'class "{name}"\'s colour') if "colour" in entry else None
        classes.append(dict(name=name, value=value, colour=colour, clutter=bool(entry.get("clutter", False))))
    labels = "values" if all(c["value"] is not None for c in classes) else "colours"
    if labels == "colours" and any(c["colour"] is None for c in classes):
        missing = next(c["name"] for c in classes if c["value"] is None and c["colour"] is None)
        raise DataError(f'{path}: class "{missing}" has neither "value" nor "colour"; give every class a "value" '
                        '(single-band labels) or every class a "colour" (colour labels)')
    for key in ("name", "value" if labels == "values" else "colour"):
        seen = [c[key] for c in classes]
        twice = next((x for x in seen if seen.count(x) > 1), None)
        if twice is not None:
            raise DataError(f"{path}: two classes have the {key} {json.dumps(twice)}; each class needs its own")
    ignore = spec.get("ignore")
    if ignore is not None:
        if labels == "colours":
            ignore = _colour(ignore, path, '"ignore"')
        elif not isinstance(ignore, int):
            raise DataError(f'{path}: "ignore" is {json.dumps(ignore)}; give the label value of unlabelled pixels, e.g. 255')
        if ignore in [c["value" if labels == "values" else "colour"] for c in classes]:
            raise DataError(f'{path}: "ignore" {json.dumps(ignore)} is also a class\'s; unlabelled pixels need a value '
                            "of their own")
    return dict(classes=classes, ignore=ignore, labels=labels)


def class_table(own) -> data.ClassTable:
    """The classes of a checkpoint's own_data entry as evaluate.py and predict.py show and write them; the
    ISPRS ones for None."""
    if own is None:
        return data.ISPRS_CLASSES
    classes = own["classes"]
    names = tuple(c["name"] for c in classes)
    values = np.full(256, IGNORE_INDEX, np.uint8)
    values[: len(classes)] = [c["value"] if c["value"] is not None else i for i, c in enumerate(classes)]
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(classes)] = [c["colour"] or _default_colour(i) for i, c in enumerate(classes)]
    scored = tuple(c["name"] for c in classes if not c["clutter"])
    return data.ClassTable(names, scored, scored, tuple(c["name"] for c in classes if c["clutter"]), values, colours)


def _default_colour(i):
    if i < len(PALETTE):
        return PALETTE[i]
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 0.9))


def model_sizes(own) -> dict:
    """The DIS2Config (or ShaSpecConfig) fields that follow the data; none for ISPRS."""
    if own is None:
        return {}
    return dict(num_classes=len(own["classes"]), rgir_channels=own["image_bands"], ndsm_channels=own["height_bands"])


# ---- Files ----------------------------------------------------------------------------------


def _images(folder: Path) -> dict[str, Path]:
    """File name without suffix -> path, for the images in a folder."""
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in SUFFIXES and path.is_file()}


def _find(root: Path, split: str) -> list[tuple[str, dict[str, Path]]]:
    """(name, {kind: path}) of every image of a split; each must have its height and label of the same name."""
    found = {kind: _images(root / split / kind) for kind in KINDS}
    if not found["image"]:
        raise DataError(f"{root / split / 'image'}: no images ({', '.join(SUFFIXES)}); one's own data holds each split "
                        f"in DIR/{split}/image, height and label (docs/data.md)")
    for kind in KINDS[1:]:
        missing = [name for name in found["image"] if name not in found[kind]]
        if missing:
            raise DataError(f"{found['image'][missing[0]]}: no {kind} of the same name in {root / split / kind} "
                            f"({len(missing)} image(s) without one); every image needs its {kind}, named alike")
    return [(name, {kind: found[kind][name] for kind in KINDS}) for name in found["image"]]


# The GeoTIFF tags that place a raster's pixels: ModelPixelScale, ModelTiepoint, ModelTransformation
_GRID_TAGS = (33550, 33922, 34264)


def _grid_tags(layer) -> dict:
    return {code: value for code, _, _, value, _ in layer.georeference if code in _GRID_TAGS}


def _check_grid(image, image_path, height, height_path):
    """The height raster covers the image's pixels: the same size and, where both are georeferenced, the same grid."""
    if height.pixels.shape[:2] != image.pixels.shape[:2]:
        raise DataError(f"{height_path}: {height.pixels.shape[0]} x {height.pixels.shape[1]} pixels, {image_path} "
                        f"{image.pixels.shape[0]} x {image.pixels.shape[1]}; the height raster must be on the image's "
                        "grid (resample it onto the image, e.g. gdalwarp -tr and -te of the image)")
    image_tags, height_tags = _grid_tags(image), _grid_tags(height)
    if image_tags and height_tags and image_tags != height_tags:
        raise DataError(f"{height_path}: georeferenced on another grid than {image_path} (origin or pixel size differ); "
                        "resample it onto the image's grid (gdalwarp)")


def _read(path: Path, bands: int | None, kind: str, reference: str, nodata=None) -> raster.Layer:
    """An image or height raster as float32 (H, W, B), its band count checked against `bands` (None: any)."""
    layer = raster.read_raw(path, nodata)
    count, dtype = layer.pixels.shape[-1], layer.pixels.dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: {dtype} pixels; save the {kind} as integers or floats")
    if bands is not None and count != bands:
        raise DataError(f"{path}: {count} band{'s' * (count != 1)}, {reference} {bands}; every {kind} must have "
                        "the same bands")
    layer.pixels = layer.pixels.astype(np.float32)
    return layer


def _label_ids(path: Path, own: dict) -> np.ndarray:
    """(H, W) uint8 class ids of a label file; IGNORE_INDEX where it holds the ignore value or has no data."""
    layer = raster.read_raw(path)
    pixels, colours = layer.pixels, own["labels"] == "colours"
    classes = own["classes"]
    if colours and (pixels.shape[-1] != 3 or pixels.dtype != np.uint8):
        raise DataError(f"{path}: {pixels.shape[-1]} band(s) of {pixels.dtype}, where classes.json gives colours; "
                        "colour labels are 8-bit RGB")
    if not colours and (pixels.shape[-1] != 1 or not np.issubdtype(pixels.dtype, np.integer)):
        raise DataError(f"{path}: {pixels.shape[-1]} band(s) of {pixels.dtype}, where classes.json gives values; "
                        "value labels are single-band integers (or give colours in classes.json)")
    # a pixel's code: its value, or its colour as one integer
    code = lambda x: np.asarray(x, np.int64) @ np.array([1 << 16, 1 << 8, 1]) if colours else np.asarray(x, np.int64)
    codes = code(pixels) if colours else pixels[..., 0].astype(np.int64)
    known = {int(code(c["colour"] if colours else c["value"])): i for i, c in enumerate(classes)}
    if own["ignore"] is not None:
        known[int(code(own["ignore"]))] = IGNORE_INDEX
    keys = np.array(sorted(known))
    at = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    unknown = keys[at] != codes
    if layer.valid is not None:
        unknown &= layer.valid
    if unknown.any():
        value = int(codes[unknown][0])
        shown = f"colour {[value >> 16, (value >> 8) & 255, value & 255]}" if colours else f"value {value}"
        raise DataError(f"{path}: label {shown} ({int((codes == value).sum())} pixels) is not in classes.json; add a "
                        f'class for it, or make it "ignore"')
    ids = np.array([known[k] for k in keys.tolist()], np.uint8)[at]
    if layer.valid is not None:
        ids[~layer.valid] = IGNORE_INDEX
    return ids


def _normalised(layer: raster.Layer, mean, std) -> np.ndarray:
    """(x - mean) / std per band, in place; 0 (the mean) where the file has no data."""
    pixels = layer.pixels
    pixels -= np.asarray(mean, np.float32)
    pixels /= np.asarray(std, np.float32)
    if layer.valid is not None:
        pixels[~layer.valid] = 0
    return pixels


def _raw_split(root, split, own) -> list[tuple[str, raster.Layer, raster.Layer, np.ndarray]]:
    """(name, image, height, label ids) of every area of a split, as the files hold them, checked."""
    root = Path(root)
    areas, bands = [], (own.get("image_bands"), own.get("height_bands"))
    first = {}  # the first file of each modality, which the others are held to where the checkpoint says nothing
    for name, paths in _find(root, split):
        layers = []
        for kind, count in zip(("image", "height"), bands):
            reference, count = ("the model was trained on", count) if count else first.get(kind, (None, None))
            layer = _read(paths[kind], count, kind, reference)
            first.setdefault(kind, (f"{paths[kind]} has", layer.pixels.shape[-1]))
            for notice in layer.notices:
                print(notice)
            layers.append(layer)
        _check_grid(layers[0], paths["image"], layers[1], paths["height"])
        label = _label_ids(paths["label"], own)
        if label.shape != layers[0].pixels.shape[:2]:
            raise DataError(f"{paths['label']}: {label.shape[0]} x {label.shape[1]} pixels, {paths['image']} "
                            f"{layers[0].pixels.shape[0]} x {layers[0].pixels.shape[1]}; a label must cover its image")
        areas.append((name, *layers, label))
    return areas


def _tile(name, image, height, label, normalisation) -> data.Tile:
    n = normalisation
    return data.Tile(name, _normalised(image, n["image_mean"], n["image_std"]),
                     _normalised(height, n["height_mean"], n["height_std"]), label, None, image.valid, height.valid)


def statistics(layers) -> tuple[list[float], list[float]]:
    """Per band, the mean and standard deviation of the layers' pixels that have data (1 where a band is constant)."""
    total = count = squares = 0
    for layer in layers:
        pixels = layer.pixels.reshape(-1, layer.pixels.shape[-1]) if layer.valid is None else layer.pixels[layer.valid]
        total = total + pixels.sum(0, dtype=np.float64)
        squares = squares + np.square(pixels, dtype=np.float64).sum(0)
        count += len(pixels)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0))
    return mean.tolist(), np.where(std > 1e-6 * np.maximum(np.abs(mean), 1), std, 1.0).tolist()


def training_tiles(root, dataset=None, summarise=False):
    """(dataset, training tiles, validation tiles, the checkpoint's own_data entry) for train.py: one's own data
    where root holds a classes.json (entry: classes, band counts, normalisation), else ISPRS (entry None).
    With `summarise`, ISPRS's files found are said per split first (data.summarise_splits), before the long read."""
    if not holds_own_data(root):
        dataset = dataset or data.detect_dataset(root)
        if summarise:
            data.summarise_splits(root, dataset)
        return dataset, data.load_split(root, "train", dataset), data.load_split(root, "val", dataset), None
    own = read_classes(root)
    train = _raw_split(root, "train", own)
    own.update(image_bands=train[0][1].pixels.shape[-1], height_bands=train[0][2].pixels.shape[-1])
    image_mean, image_std = statistics(area[1] for area in train)
    height_mean, height_std = statistics(area[2] for area in train)
    own["normalisation"] = dict(image_mean=image_mean, image_std=image_std, height_mean=height_mean, height_std=height_std)
    val = _raw_split(root, "val", own)
    return DATASET, *([_tile(*area, own["normalisation"]) for area in split] for split in (train, val)), own


def load_split(root, split, own) -> list[data.Tile]:
    """The tiles of a split of one's own data, read as the checkpoint's own_data entry `own` says (evaluate.py)."""
    return [_tile(*area, own["normalisation"]) for area in _raw_split(root, split, own)]


def read_layers(image_path, height_path, args):
    """predict.py's modalities of one area of one's own data as raster.Layer (None where not given), read and
    normalised as the checkpoint's own_data entry (args.own_data) says (raster.read_area reads ISPRS's)."""
    own = args.own_data
    n, layers = own["normalisation"], []
    for path, kind, bands, nodata in ((image_path, "image", own["image_bands"], args.rgir_nodata),
                                      (height_path, "height", own["height_bands"], args.ndsm_nodata)):
        layer = None if path is None else _read(Path(path), bands, kind, "the model was trained on", nodata)
        if layer is not None:
            layer.pixels = _normalised(layer, n[f"{kind}_mean"], n[f"{kind}_std"])
        layers.append(layer)
    if None not in layers:
        _check_grid(layers[0], image_path, layers[1], height_path)
    return tuple(layers)
