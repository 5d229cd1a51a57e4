"""
Label maps of new imagery with a trained DIS2: an orthophoto and an NDSM, or
either alone (the model's missing-modality scenarios), one file or a folder of
them; the outputs are GeoTIFFs georeferenced as the inputs (docs/predict.md).

    python predict.py --out maps/ --rgir ortho.tif --ndsm ndsm.tif --checkpoint runs/x/best.pt
    python predict.py --out maps/ --rgir ortho.tif                 # without the NDSM
    python predict.py --out maps/ --rgir orthos/ --ndsm ndsms/     # folders, matched by name

Windows, batches and the averaging of overlapping windows are evaluate.py's, so
a tile gets the labels evaluate.py scores; the image is written in strips of
rows as they are done, so memory does not grow with the image.

Missing where missing: where a file has no data (NaN, its nodata value, alpha 0,
its mask; raster.py reads them), each pixel is labelled in the scenario its
data allows: full where both modalities have data, missing NDSM or missing
RGIR where one has, none (label 255) where neither has.
"""

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tifffile
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data
import own_data
import raster
from data import DataError, one_line
from dis2 import SCENARIOS, upsample
from distributed import leave_distributed, setup_distributed
from runtime import add_inference_flags, inference_setup, model_from_checkpoint, use_channels_last, writable_dir


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TILE = 256  # side of the outputs' tiles, as in a Cloud Optimized GeoTIFF; a GIS reads the tiles it shows


# Per pixel, the scenario its data allows (--scenario-map writes it): the codes of dis2.SCENARIOS in order,
# full 0, missing RGIR 1, missing NDSM 2, and NO_SCENARIO where neither modality has data. There the label
# is NODATA_LABEL: no class (black in the palette, as data.IGNORE_INDEX), declared as the GeoTIFF's nodata.
SCENARIO_CODES = {scenario: code for code, scenario in enumerate(SCENARIOS)}
NO_SCENARIO = NODATA_LABEL = 255


def scenario_map(rgir_valid, ndsm_valid) -> np.ndarray:
    """(H, W) uint8 the scenario each pixel's data allows, from where each modality has data: (H, W) bool,
    all False for a modality not given."""
    codes = np.full(rgir_valid.shape, NO_SCENARIO, np.uint8)
    codes[ndsm_valid] = SCENARIO_CODES["missing_rgir"]
    codes[rgir_valid] = SCENARIO_CODES["missing_ndsm"]
    codes[rgir_valid & ndsm_valid] = SCENARIO_CODES["full"]
    return codes


def filled(x, valid):
    """(B, C, h, w) normalised windows whose pixels without data (`valid`, (B, h, w) bool numpy, False) take
    values from the pixels with data around them, by pull-push: averages of the pixels with data over 2 x 2,
    4 x 4, ... blocks until every block has some, then, from the coarsest blocks back, each pixel or block
    without data takes the bilinear upsampling of the blocks above it. A small hole gets the values at its
    rim, a large one tends to the window's mean, and no step is made where the data ends (docs/predict.md).
    `valid` None: x as it is."""
    if valid is None or valid.all():
        return x
    weight = torch.from_numpy(valid).to(x.device, x.dtype)[:, None]  # (B, 1, h, w): share of pixels with data
    levels = []
    while (weight == 0).any() and min(x.shape[-2:]) > 1:
        levels.append((x, weight > 0))
        x, weight = F.avg_pool2d(x * weight, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)
        x = x / weight.clamp_min(1e-12)  # the mean of the pixels with data in each block
    for finer, has_data in reversed(levels):
        x = torch.where(has_data, finer, F.interpolate(x, size=finer.shape[-2:], mode="bilinear"))
    return x


def window_outputs(model, rgir, ndsm, batch, window, device, amp_dtype, attention, memory_format,
                   rgir_valid=None, ndsm_valid=None):
    """(B, K, window, window) softmax probabilities of the windows at `batch` (top-left corners)
    from the modalities given (None: missing), their pixels without data (`*_valid` False) filled.
    With `attention`, K more channels: alpha_k of Eq. 9 upsampled and scaled by h*w, so that 1
    means uniform attention at any window size."""
    cut = lambda image: None if image is None else np.stack([image[y : y + window, x : x + window] for y, x in batch])
    r, n = cut(rgir), cut(ndsm)
    normalised = data.normalise(r, n)
    r, n = (None if x is None else filled(t.to(device, non_blocking=True), cut(valid))
            for x, t, valid in zip((r, n), normalised, (rgir_valid, ndsm_valid)))
    r, n = (None if x is None else x.contiguous(memory_format=memory_format) for x in (r, n))
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(r, n)  # model(rgir, None), model(None, ndsm): the missing-modality scenarios
    probabilities = out.logits.float().softmax(dim=1)
    if not attention:
        return probabilities
    alpha = out.attention.float()  # (B, K, window/16, window/16)
    return torch.cat([probabilities, alpha.shape[-2] * alpha.shape[-1] * upsample(alpha, (window, window))], dim=1)


def composed_outputs(model, rgir, ndsm, rgir_valid, ndsm_valid, codes, batch, window, device, amp_dtype, attention,
                     memory_format):
    """window_outputs of the windows at `batch`, each pixel's from the scenario its data allows (`codes`, the
    scenario_map): every scenario runs on the windows that have pixels of it, so a window inside one kind
    of region runs that scenario alone, and a pixel keeps its own scenario's values; 0 where none."""
    window_codes = torch.from_numpy(np.stack([codes[y : y + window, x : x + window] for y, x in batch])).to(device)
    channels = model.config.num_classes * (1 + attention)
    composed = torch.zeros(len(batch), channels, window, window, device=device)
    for scenario, code in SCENARIO_CODES.items():
        inside = window_codes == code  # (B, window, window)
        chosen = inside.flatten(1).any(1).nonzero()[:, 0]
        if len(chosen) == 0:
            continue
        missing = SCENARIOS[scenario]
        outputs = window_outputs(model, None if missing == "rgir" else rgir, None if missing == "ndsm" else ndsm,
                                 [batch[i] for i in chosen.tolist()], window, device, amp_dtype, attention,
                                 memory_format, rgir_valid, ndsm_valid)
        composed[chosen] += outputs * inside[chosen, None]
    return composed


def coverage(starts, size, window, device):
    """(size,) how many of the windows starting at `starts` cover each position along one axis."""
    count = torch.zeros(size, device=device)
    for start in set(starts):
        count[start : start + window] += 1
    return count


@torch.inference_mode()
def predict_strips(model, rgir, ndsm, window, overlap, batch_size, device, amp_dtype,
                   probabilities=False, attention=False, channels_last=None, rgir_valid=None, ndsm_valid=None):
    """Predicts one image from rgir (H, W, 3) and/or ndsm (H, W) uint8 (None: that modality is
    missing), where `rgir_valid` and `ndsm_valid` ((H, W) bool; None: everywhere) say they have
    data, and yields it top to bottom in strips of rows: dicts with "labels", (h, W) uint8 class
    ids in the scenario each pixel's data allows (NODATA_LABEL where neither modality has data),
    "scenario", (h, W) uint8 that scenario's code (SCENARIO_CODES, NO_SCENARIO), and if asked
    "probabilities" and "attention", (h, W, K) float32 means over the windows covering each
    pixel (0 where no scenario). Windows, batches and summation are predict_tile's, so with data
    everywhere the labels are the same; but only the rows that windows still to come overlap are
    held (K x about window + batch rows x W floats), never K x H x W. `channels_last`: as predict_tile's."""
    H, W = (rgir if rgir is not None else ndsm).shape[:2]
    memory_format = torch.channels_last if use_channels_last(device, channels_last) else torch.contiguous_format
    has_data = lambda image, valid: valid if image is not None and valid is not None else np.broadcast_to(
        image is not None, (H, W))
    codes = scenario_map(has_data(rgir, rgir_valid), has_data(ndsm, ndsm_valid))
    rgir, ndsm, rgir_valid, ndsm_valid, codes = (None if x is None else data.pad_to_window(x, window)
                                                 for x in (rgir, ndsm, rgir_valid, ndsm_valid, codes))
    padded_h, padded_w = codes.shape
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
        values = composed_outputs(model, rgir, ndsm, rgir_valid, ndsm_valid, codes, batch, window, device,
                                  amp_dtype, attention, memory_format)
        for (y, x), window_values in zip(batch, values):
            held[:, y - top : y - top + window, x : x + window] += window_values
        done = starts[i + batch_size][0] if i + batch_size < len(starts) else padded_h  # no later window reaches above
        if done > top:
            sums = held[:, : min(done, H) - top, :W]
            scenario = codes[top : top + sums.shape[1], :W]
            labels = sums[:K].argmax(0).to(torch.uint8).cpu().numpy()
            labels[scenario == NO_SCENARIO] = NODATA_LABEL
            strip = {"labels": labels, "scenario": scenario}
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


def read_pair(rgir_path, ndsm_path, args, trained_on=None):
    """The checked modalities of one pair as raster.Layer, pixels and where they have data (None for
    a missing modality), read as --bands, --max-value, --ndsm-unit and the nodata flags say; the
    GeoTIFF tags of its prediction: the orthophoto's, or the NDSM's if the orthophoto has none; and
    the notices of reading it (alpha bands, a modality without any data, which is then missing,
    and, given the checkpoint's dataset `trained_on`, pixel sizes far from those the model learnt)."""
    rgir, ndsm = own_data.read_layers(rgir_path, ndsm_path, args)  # one's own data as the checkpoint says, or ISPRS
    if rgir is not None and ndsm is not None and ndsm.pixels.shape[:2] != rgir.pixels.shape[:2]:
        (height, width), (rgir_height, rgir_width) = ndsm.pixels.shape[:2], rgir.pixels.shape[:2]
        raise DataError(f"{ndsm_path}: size {height} x {width} differs from {rgir_path} ({rgir_height} x "
                        f"{rgir_width}); the orthophoto and the NDSM must cover the same pixels")
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


SCALE_TOLERANCE = 1.5  # pixels this much larger or smaller than in training show objects at sizes never seen


def pixel_size_notice(path, tags, trained_on):
    """[a notice] when the GeoTIFF tags give a pixel size more than SCALE_TOLERANCE times off that of the
    dataset the model was trained on (9 cm Vaihingen, 5 cm Potsdam), else []: the model's priors of how
    large cars, trees and buildings are no longer hold."""
    size, trained = raster.pixel_size(tags), raster.PIXEL_SIZE.get(trained_on)
    if size is None or trained is None or 1 / SCALE_TOLERANCE <= size / trained <= SCALE_TOLERANCE:
        return []
    return [f"notice: {path}: pixels of {100 * size:.3g} cm, the model was trained on {100 * trained:.0f} cm "
            f"({trained_on}), so objects appear at sizes it never saw; resample the image to about "
            f"{100 * trained:.0f} cm for labels as good as in training"]


def halved(rows, reduce):
    """(ceil(h / 2), ceil(w / 2), S) the 2 x 2 blocks of `rows` (h, w, S) reduced to one pixel each, for an
    overview: "mean" averages them (probabilities, attention); "mode" keeps the value most of the four share,
    the top-left one on a tie (class ids, palette colours, scenarios: a value of the image, never a mix).
    An odd last row or column pairs with itself."""
    rows = np.pad(rows, ((0, rows.shape[0] % 2), (0, rows.shape[1] % 2), (0, 0)), mode="edge")
    corners = np.stack([rows[i::2, j::2] for i in (0, 1) for j in (0, 1)])  # (4, h/2, w/2, S)
    if reduce == "mean" and rows.dtype == np.uint8:
        return ((corners.sum(0, dtype=np.uint16) + 2) // 4).astype(np.uint8)  # rounded half up
    if reduce == "mean":
        return corners.mean(0, dtype=rows.dtype)
    shared = (corners[:, None] == corners[None]).all(-1).sum(1)  # (4, h/2, w/2): how many of the four equal each
    return np.take_along_axis(corners, shared.argmax(0)[None, ..., None], 0)[0]


def tiles(source, shape, dtype, reduce, halves):
    """The tiles of the image (h, w, S) in the raw file `source`, a row of tiles at a time, left to right and
    top to bottom, as tifffile writes them; on the way each row of tiles goes halved to the raw file `halves`
    (None: no overview below), so an overview is made from the level above with one row of tiles in memory."""
    h, w, samples = shape
    for top in range(0, h, TILE):
        rows = np.fromfile(source, dtype, count=min(TILE, h - top) * w * samples).reshape(-1, w, samples)
        if halves is not None:
            halved(rows, reduce).tofile(halves)
        for left in range(0, w, TILE):
            tile = rows[:, left : left + TILE]
            yield tile if samples > 1 else tile[..., 0]


class StripWriter:
    """A GeoTIFF fed strips of rows, top to bottom, that a GIS draws fast at any zoom: tiled, DEFLATE-compressed,
    with overviews (docs/predict.md). The strips go to a raw temporary file as they come, and `commit` writes
    the GeoTIFF from it and renames it, so memory holds a row of tiles, never the image. Every file is written
    under a temporary name in the output folder, .<name>.<part>.partial, so a failed or interrupted run
    leaves no file that looks complete."""

    def __init__(self, path, shape, dtype, photometric, tags, colormap=None, reduce="mode"):
        self.path, self.dtype, self.photometric, self.tags = path, np.dtype(dtype), photometric, tags
        self.shape, self.colormap, self.reduce = (*shape[:2], shape[2] if len(shape) == 3 else 1), colormap, reduce
        self.temporaries = []
        self.file = open(self.temporary(0), "wb")

    def temporary(self, part):
        """The temporary file `part`: 0 the strips, 1, 2, ... each overview raw, "tif" the GeoTIFF."""
        path = self.path.with_name(f".{self.path.name}.{part}.partial")
        if path not in self.temporaries:
            self.temporaries.append(path)
        return path

    def write(self, rows):
        self.file.write(np.ascontiguousarray(rows).tobytes())

    def commit(self):
        self.file.close()
        levels = [self.shape]  # full resolution, then halved until the image fits in one tile
        while max(levels[-1][:2]) > TILE:
            h, w, samples = levels[-1]
            levels.append((-(-h // 2), -(-w // 2), samples))
        # a horizontal predictor makes smooth bands compress better; class ids gain nothing from it
        predictor = None if self.reduce == "mode" else 3 if self.dtype.kind == "f" else 2
        bigtiff = sum(map(np.prod, levels)) * self.dtype.itemsize > 2**32 - 2**25  # sized uncompressed, to be safe
        with tifffile.TiffWriter(self.temporary("tif"), bigtiff=bigtiff) as tiff:
            for level, shape in enumerate(levels):
                below = level + 1 < len(levels)
                with open(self.temporary(level), "rb") as raw, \
                        open(self.temporary(level + 1), "wb") if below else nullcontext() as halves:
                    tiff.write(tiles(raw, shape, self.dtype, self.reduce, halves),
                               shape=shape if shape[2] > 1 else shape[:2], dtype=self.dtype,
                               photometric=self.photometric, colormap=self.colormap, planarconfig="contig",
                               tile=(TILE, TILE), compression="zlib", predictor=predictor,
                               subfiletype=1 if level else 0,  # 1: a reduced-resolution version of the first
                               extratags=[] if level else self.tags, metadata=None)
                self.temporary(level).unlink()
        os.replace(self.temporary("tif"), self.path)

    def discard(self):
        self.file.close()
        for temporary in self.temporaries:
            temporary.unlink(missing_ok=True)


# The label GeoTIFF is a palette image: its values are class ids, and its colour table (TIFF ColorMap,
# 16 bits a channel) gives them the ISPRS colours, black to the rest, NODATA_LABEL among them.
LABEL_COLOURS = data.labels_to_rgb(np.arange(256)).T.astype(np.uint16) * 257  # (3, 256)
NODATA_TAG = (raster.GDAL_NODATA, "s", 0, str(NODATA_LABEL), True)  # declares NODATA_LABEL to GDAL and QGIS


def stored(key, values, colour, classes=data.ISPRS_CLASSES):
    """A strip's values as written: class ids (one's own data: their values) or palette colours; probabilities as
    uint8 0-255."""
    if key == "labels":
        return classes.colours[values] if colour else classes.values[values]
    return np.rint(255 * values).astype(np.uint8) if key == "probabilities" else values


def predict_file(model, rgir_path, ndsm_path, out_dir, args, window, overlap, device, amp_dtype):
    """OUT/<name>_labels.tif, and _probabilities.tif, _attention.tif and _scenario.tif if asked,
    for one input pair."""
    rgir, ndsm, tags, _ = read_pair(rgir_path, ndsm_path, args)  # its notices were given when it was checked
    H, W = (rgir or ndsm).pixels.shape[:2]
    name, K = area_name(rgir_path, ndsm_path), model.config.num_classes
    classes = own_data.class_table(getattr(args, "own_data", None))
    colour_table = LABEL_COLOURS if classes is data.ISPRS_CLASSES else own_data.colour_table(classes)
    # key: (shape, dtype, photometric, extra tags, colour table, how overviews reduce it); --colour's RGB
    # declares no nodata, as GDAL would take 0 in any band for it: the red of a blue building
    formats = {"labels": ((H, W, 3), np.uint8, "rgb", [], None, "mode") if args.colour
               else ((H, W), np.uint8, "palette", [NODATA_TAG], colour_table, "mode")}
    if args.probabilities:
        formats["probabilities"] = ((H, W, K), np.uint8, "minisblack", [], None, "mean")
    if args.attention:
        formats["attention"] = ((H, W, K), np.float32, "minisblack", [], None, "mean")
    if args.scenario_map:
        formats["scenario"] = ((H, W), np.uint8, "minisblack", [NODATA_TAG], None, "mode")
    writers = {}
    try:
        for key, (shape, dtype, photometric, extra_tags, colours, reduce) in formats.items():
            writers[key] = StripWriter(out_dir / f"{name}_{key}.tif", shape, dtype, photometric, tags + extra_tags,
                                       colours, reduce)
        (rgir, rgir_valid), (ndsm, ndsm_valid) = ((None, None) if layer is None else (layer.pixels, layer.valid)
                                                  for layer in (rgir, ndsm))
        for strip in predict_strips(model, rgir, ndsm, window, overlap, args.batch_size, device, amp_dtype,
                                    args.probabilities, args.attention, args.channels_last, rgir_valid, ndsm_valid):
            for key, writer in writers.items():
                writer.write(stored(key, strip[key], args.colour, classes))
        for writer in writers.values():
            writer.commit()
    except OSError as error:
        raise DataError(f"--out {out_dir}: cannot write the prediction of {name} ({error.strerror or error}); "
                        "free some space or choose another folder") from error
    finally:
        for writer in writers.values():
            writer.discard()


def output_kinds(args):
    """The outputs asked for, each area's <name>_<kind>.tif."""
    asked = (("probabilities", args.probabilities), ("attention", args.attention), ("scenario", args.scenario_map))
    return ["labels"] + [kind for kind, wanted in asked if wanted]


def area_name(rgir_path, ndsm_path):
    """An area's name: its orthophoto's file name without suffix, its NDSM's where it has no orthophoto."""
    return (rgir_path or ndsm_path).stem


def checked(args, checkpoint, device, rank, world):
    """The model, every pair, how many areas are skipped, this process's pairs whose inputs read and check
    well, and the failures ({area: one-line reason}) of its others, each said in one line as it is found.
    Areas whose outputs are all in --out are skipped (--overwrite: none), the others are shared out in turn
    among the `world` processes of a torchrun, and each reads and checks its own."""
    pairs, notices = prediction_pairs(args.rgir, args.ndsm)
    model = model_from_checkpoint(checkpoint, device, args.compile, args.channels_last)
    if args.attention and not model.config.classwise:
        raise DataError("--attention: this checkpoint's model has no classwise attention (an HF or HF+DLKD variant); "
                        "drop --attention")
    if args.compile:
        model = FullBatches(model, args.batch_size)
    done = lambda pair: all((Path(args.out) / f"{area_name(*pair)}_{kind}.tif").exists() for kind in output_kinds(args))
    todo = [pair for pair in pairs if args.overwrite or not done(pair)]
    if len(todo) < len(pairs):
        notices.append(f"notice: {len(pairs) - len(todo)} of {len(pairs)} area(s) skipped: their outputs in {args.out} "
                       "are complete (--overwrite predicts them again)")
    for notice in notices if rank == 0 else []:
        print(notice)
    mine, failures = [], {}
    for pair in todo[rank::world]:  # every input is read and checked before anything is written
        try:
            notices = read_pair(*pair, args, checkpoint.get("dataset"))[-1]
        except DataError as error:  # this area fails, the others go on
            failures[area_name(*pair)] = failure(error)
            continue
        for notice in notices:
            print(notice)
        mine.append(pair)
    return model, pairs, len(pairs) - len(todo), mine, failures


def failure(error):
    """A failed area's reason, said at once in one line (on stderr, as a user error), and returned."""
    reason = one_line(error)
    tqdm.write(f"error: {reason}", file=sys.stderr)
    return reason


def agreed(check, device, rank, world):
    """check() in every process; where it stops with a user error in any of them, every process stops, before any
    has written anything, and only the first of those that stopped says why (the same error in every
    process would otherwise be printed once for each), before any exits: torchrun stops the others at the
    first exit."""
    try:
        result, error = check(), None
    except DataError as e:
        result, error = None, e
    if world > 1:
        first = torch.tensor([rank if error else world], device=device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        if first.item() < world:
            if first.item() == rank:
                print("error: " + one_line(error), file=sys.stderr, flush=True)
            leave_distributed()
            raise SystemExit(2)
    if error:
        raise error
    return result


def predict(args, checkpoint, window, overlap, device, amp_dtype):
    """Label maps of new imagery, one per orthophoto/NDSM pair; under torchrun the processes share the pairs
    out, each pair predicted and written by one of them. An area whose input is bad or whose write fails is
    said in one line by the process that meets it, and the others go on; the first process ends with a
    summary line, and every process exits with status 2 if an area failed. For folders, a mosaic of each output."""
    device, rank, world = setup_distributed(device)
    model, pairs, skipped, mine, failures = agreed(lambda: checked(args, checkpoint, device, rank, world),
                                                   device, rank, world)
    if sum(gathered(len(mine), world)) + skipped == 0:  # every area failed its check: nothing is written
        finish(pairs, skipped, 0, failures, rank, world)
    # then one process makes the folder (another's write test could remove the test file of the first)
    out_dir = agreed(lambda: writable_dir(args.out, "--out") if rank == 0 else Path(args.out), device, rank, world)
    start = time.perf_counter()
    for pair in tqdm(mine, desc="predicting", unit="image", disable=None if rank == 0 else True):
        try:
            predict_file(model, *pair, out_dir, args, window, overlap, device, amp_dtype)
        except DataError as error:  # a failed write (a full disk): said, and the next area tried
            failures[area_name(*pair)] = failure(error)
    written = len([pair for pair in mine if area_name(*pair) not in failures])
    by = f" (process {rank} of {world})" if world > 1 else ""
    print(f"wrote the predictions of {written} image(s) to {out_dir} in {time.perf_counter() - start:.1f} s{by}")
    finish(pairs, skipped, written, failures, rank, world, out_dir if Path(args.rgir or args.ndsm).is_dir() else None,
           output_kinds(args))


def gathered(value, world):
    """[value of each process] in process order: what every process of a torchrun gave, [value] without one."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def finish(pairs, skipped, written, failures, rank, world, mosaic_dir=None, kinds=()):
    """Waits for every process's areas; then the first writes the mosaics of the areas that did not fail (in
    `mosaic_dir`, None: none) and prints the summary line, and every process exits with status 2 if any area
    failed anywhere. Returns otherwise."""
    written, failures = zip(*gathered((written, failures), world))
    failures = {name: reason for each in failures for name, reason in each.items()}
    if world > 1:
        leave_distributed()
    if rank == 0:
        names = [area_name(*pair) for pair in pairs]
        complete = [name for name in names if name not in failures]
        if mosaic_dir is not None and complete:
            write_mosaics(mosaic_dir, complete, kinds)
        failed = [f"{name} ({failures[name]})" for name in names if name in failures]
        print(f"{len(pairs)} area(s): {sum(written)} predicted, {skipped} skipped (outputs complete), "
              f"{len(failed)} failed" + (": " + "; ".join(failed) if failed else ""))
    if failures:
        raise SystemExit(2)


class FullBatches(torch.nn.Module):
    """The model given batches of exactly `size` windows, a short one filled up with copies of its last window
    and the copies' outputs dropped. A compiled model then meets one input shape per modality pattern (three
    graphs), where batches of every size (a scenario's share of a batch, an area's last batch) would pass
    Dynamo's recompile limit and silently run eagerly."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size, self.config = model, size, model.config

    def forward(self, rgir, ndsm):
        n = (rgir if rgir is not None else ndsm).shape[0]
        full = lambda x: None if x is None else torch.cat([x, x[-1:].expand(self.size - n, *x.shape[1:])])
        out = self.model(full(rgir), full(ndsm))
        return SimpleNamespace(logits=out.logits[:n], attention=None if out.attention is None else out.attention[:n])


# -----------------------------------------------------------------------------
# One layer for the whole run: a GDAL virtual mosaic (VRT) of a folder's outputs


def grid(tags):
    """(coordinate system, top-left corner, pixel size) of a north-up grid from a GeoTIFF's tags ({code: value}):
    the corner of its top-left pixel, and the pixel's width and height (negative: rows run south); None without
    georeferencing or for a rotated grid. The coordinate system is "EPSG:<code>" where the GeoKeys give a
    code, else the GeoKeys themselves."""
    entries = tags.get(34735, ())[4:]  # GeoKeyDirectory: after the header, (key, location, count, value) per key
    keys = {entries[i]: entries[i + 3] for i in range(0, len(entries) - 3, 4) if entries[i + 1] == 0}
    if 34264 in tags:  # ModelTransformation, a 4 x 4 matrix row by row
        m = tags[34264]
        if m[1] or m[4]:
            return None
        corner, size = (m[3], m[7]), (m[0], m[5])
    elif 33550 in tags and 33922 in tags:  # ModelPixelScale, and a ModelTiepoint (i, j, k, x, y, z)
        (sx, sy), (i, j, _, x, y) = tags[33550][:2], tags[33922][:5]
        corner, size = (x - i * sx, y + j * sy), (sx, -sy)
    else:
        return None
    if keys.get(1025) == 2:  # GTRasterTypeGeoKey PixelIsPoint: the tiepoint is a pixel's centre, as GDAL reads it
        corner = (corner[0] - size[0] / 2, corner[1] - size[1] / 2)
    code = keys.get(3072, keys.get(2048))  # ProjectedCSTypeGeoKey, else GeographicTypeGeoKey; 32767: user-defined
    crs = f"EPSG:{code}" if code and code != 32767 else tuple(tags.get(c) for c in (34735, 34736, 34737))
    return crs, corner, size


GDAL_TYPES = {np.dtype(np.uint8): "Byte", np.dtype(np.float32): "Float32"}


def write_mosaics(out_dir, names, kinds):
    """OUT/<kind>.vrt for each kind of output: a GDAL virtual mosaic of the areas' files, which a GIS opens as
    one layer. Its areas share the coordinate system and pixel size of most areas; the others are named
    and left out."""
    grids, shapes = {}, {}
    for name in names:
        with tifffile.TiffFile(out_dir / f"{name}_labels.tif") as tiff:
            grids[name] = grid({tag.code: tag.value for tag in tiff.pages.first.tags})
            shapes[name] = tiff.pages.first.shape[:2]
    placed = [(crs, size) for crs, _, size in filter(None, grids.values())]
    if not placed:
        print(f"notice: no mosaic in {out_dir}: no area is georeferenced on a north-up grid")
        return
    crs, size = max(placed, key=placed.count)
    describe = lambda system: system if isinstance(system, str) else "a coordinate system without an EPSG code"
    reasons = {name: "no georeferencing, or a rotated grid" if g is None else
               f"coordinate system {describe(g[0])}, the mosaic's is {describe(crs)}" if g[0] != crs else
               f"pixels of {g[2][0]:g} x {-g[2][1]:g}, the mosaic's are {size[0]:g} x {-size[1]:g}"
               for name, g in grids.items() if g is None or (g[0], g[2]) != (crs, size)}
    if reasons:
        print(f"notice: the mosaics in {out_dir} leave out "
              + ", ".join(f"{name} ({why})" for name, why in reasons.items()) + "; add those as layers of their own")
    inside = [name for name in names if name not in reasons]
    # each area's top-left corner in pixels of the mosaic, whose corner is that of the area furthest up and left
    offsets = {name: ((grids[name][1][0] - grids[inside[0]][1][0]) / size[0],
                      (grids[name][1][1] - grids[inside[0]][1][1]) / size[1]) for name in inside}
    left, top = min(x for x, _ in offsets.values()), min(y for _, y in offsets.values())
    offsets = {name: (x - left, y - top) for name, (x, y) in offsets.items()}
    width = math.ceil(max(x + shapes[name][1] for name, (x, _) in offsets.items()) - 1e-6)
    height = math.ceil(max(y + shapes[name][0] for name, (_, y) in offsets.items()) - 1e-6)
    corner = (grids[inside[0]][1][0] + left * size[0], grids[inside[0]][1][1] + top * size[1])
    for kind in kinds:
        mosaic = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
        if isinstance(crs, str):
            ET.SubElement(mosaic, "SRS").text = crs
        ET.SubElement(mosaic, "GeoTransform").text = ", ".join(map(repr, (corner[0], size[0], 0.0, corner[1], 0.0,
                                                                            size[1])))
        with tifffile.TiffFile(out_dir / f"{inside[0]}_{kind}.tif") as tiff:
            page = tiff.pages.first
            samples, dtype, colours = page.samplesperpixel, page.dtype, page.colormap
            nodata = page.tags.get(raster.GDAL_NODATA)
        for band in range(1, samples + 1):
            element = ET.SubElement(mosaic, "VRTRasterBand", dataType=GDAL_TYPES[dtype], band=str(band))
            if nodata is not None:
                ET.SubElement(element, "NoDataValue").text = nodata.value
            if colours is not None:
                ET.SubElement(element, "ColorInterp").text = "Palette"
                table = ET.SubElement(element, "ColorTable")
                for r, g, b in colours.T // 257:
                    ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4="255")
            elif samples == 3 and page.photometric == tifffile.PHOTOMETRIC.RGB:
                ET.SubElement(element, "ColorInterp").text = ("Red", "Green", "Blue")[band - 1]
            for name in inside:
                # a ComplexSource with NODATA: an area's pixels without data do not cover its neighbour's
                source = ET.SubElement(element, "SimpleSource" if nodata is None else "ComplexSource")
                ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = f"{name}_{kind}.tif"
                ET.SubElement(source, "SourceBand").text = str(band)
                (h, w), (x, y) = shapes[name], offsets[name]
                ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
                ET.SubElement(source, "DstRect", xOff=f"{x:.6f}", yOff=f"{y:.6f}", xSize=str(w), ySize=str(h))
                if nodata is not None:
                    ET.SubElement(source, "NODATA").text = nodata.value
        ET.indent(mosaic)
        temporary = out_dir / f".{kind}.vrt.partial"
        ET.ElementTree(mosaic).write(temporary, encoding="utf-8")
        os.replace(temporary, out_dir / f"{kind}.vrt")


# -----------------------------------------------------------------------------
# Command line


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def parse_args(argv=None):
    p = data.ArgumentParser(description="Label maps of new imagery with a DIS2 checkpoint (docs/predict.md).")
    p.add_argument("--out", required=True, metavar="OUT", help="folder for <name>_labels.tif per input, "
                   "georeferenced as the input")
    p.add_argument("--rgir", metavar="PATH", help="orthophoto: a GeoTIFF (any common compression, 8-bit or deeper), "
                   "PNG or JPEG, 3 bands IR, R, G or 4 bands R, G, B, IR (alpha bands not counted), or a folder of "
                   "them; leave out if missing")
    p.add_argument("--ndsm", metavar="PATH", help="NDSM: 8-bit as the ISPRS ones, float metres, or integers in "
                   "--ndsm-unit; or a folder of them named as the orthophotos; leave out if missing")
    p.add_argument("--bands", type=raster.band_order, metavar="ORDER",
                   help="the orthophoto's bands in file order, named ir, r, g and optionally b, e.g. g,r,ir or "
                        "b,g,r,ir (default: by their count, as --rgir says); naming every band, alpha included, "
                        "reads a band tagged as alpha as data")
    p.add_argument("--max-value", type=data.positive_int, metavar="N",
                   help="the orthophoto value that becomes 255, e.g. 4095 for 12-bit data (default: the file's "
                        "MaxSampleValue, else the top of its bit depth: 255, 65535, ...)")
    p.add_argument("--ndsm-unit", type=positive_float, metavar="METRES",
                   help="metres per NDSM value, e.g. 0.01 for centimetres; needed for integer NDSMs other than "
                        "8-bit (default: 8-bit as the ISPRS NDSMs, float as metres)")
    p.add_argument("--rgir-nodata", type=float, metavar="VALUE",
                   help="the orthophoto value of pixels without data where every band holds it, e.g. 0 for a "
                        "black collar (default: the file's GDAL_NODATA tag; alpha 0, a mask and NaN count too)")
    p.add_argument("--ndsm-nodata", type=float, metavar="VALUE",
                   help="the NDSM value of pixels without data, e.g. -9999 (default: the file's GDAL_NODATA tag; "
                        "alpha 0, a mask and NaN count too)")
    p.add_argument("--colour", action="store_true", help="labels in the ISPRS palette colours instead of class ids")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <name>_probabilities.tif: per-class probabilities, uint8 0-255, a band per class")
    p.add_argument("--attention", action="store_true",
                   help="also write <name>_attention.tif: the classwise attention maps alpha_k (Eq. 9) upsampled, "
                        "float32, a band per class, 1 = uniform")
    p.add_argument("--scenario-map", action="store_true",
                   help="also write <name>_scenario.tif: the scenario each pixel was predicted in, 0 full, "
                        "1 missing RGIR, 2 missing NDSM, 255 neither modality has data")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every area again (default: an area whose outputs are all in --out is skipped)")
    add_inference_flags(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device, amp_dtype, _, checkpoint, window, overlap = inference_setup(args)
    predict(args, checkpoint, window, overlap, device, amp_dtype)


if __name__ == "__main__":
    data.exit_on_user_error(main)
