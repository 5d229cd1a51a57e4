"""
Label maps of new imagery with a trained DIS2: an orthophoto and an NDSM, or
either alone (the model's missing-modality scenarios), one file or a folder of
them; the outputs are GeoTIFFs georeferenced as the inputs (docs/predict.md).

    python predict.py --out maps/ --rgir ortho.tif --ndsm ndsm.tif --checkpoint runs/x/best.pt
    python predict.py --out maps/ --rgir ortho.tif                 # without the NDSM
    python predict.py --out maps/ --rgir orthos/ --ndsm ndsms/     # folders, matched by name

Windows, batches and the averaging of overlapping windows are evaluate.py's (the
loop in runtime.py), so a tile gets the labels evaluate.py scores; the image is written
in strips of rows as they are done (geotiff.py), so memory does not grow with the image.

Missing where missing: where a file has no data (NaN, its nodata value, alpha 0,
its mask; raster.py reads them), each pixel is labelled in the scenario its
data allows: full where both modalities have data, missing NDSM or missing
RGIR where one has, none (label 255) where neither has.

A city: under torchrun each process claims the next area nobody has (a claim file in OUT), with no collective
after the start; a rerun skips an area only where its outputs record this checkpoint, inputs and flags.
"""

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import geotiff
import own_data
import raster
from data import DataError, one_line
from dis2 import SCENARIOS, upsample
from distributed import claim, first_process_value, leave_distributed, report, results, setup_distributed, stop_together
from runtime import (FullBatches, add_inference_flags, add_windows, file_sha256, inference_setup, model_from_checkpoint,
                     model_on_windows, positive_float, window_batches, window_coverage, windows_at, writable_dir)


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


def filled_by_pull_push(x, valid):
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


@dataclass
class Settings:
    """How an area is predicted: the model, its sliding windows and batches, the device and precision (the
    autocast dtype, None: fp32; channels_last as runtime.use_channels_last), and what beside the labels."""

    model: torch.nn.Module
    window: int
    overlap: int
    batch_size: int
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool | None = None
    probabilities: bool = False
    attention: bool = False


def window_outputs(settings, rgir, ndsm, batch, rgir_valid=None, ndsm_valid=None):
    """(B, K, window, window) softmax probabilities of the windows at `batch` (top-left corners)
    from the modalities given (None: missing), their pixels without data (`*_valid` False) filled.
    With settings.attention, K more channels: alpha_k of Eq. 9 upsampled and scaled by h*w, so that 1
    means uniform attention at any window size."""
    window = settings.window
    fill = lambda r, n: (None if x is None else filled_by_pull_push(x, windows_at(valid, batch, window))
                         for x, valid in ((r, rgir_valid), (n, ndsm_valid)))
    # model(rgir, None), model(None, ndsm): the missing-modality scenarios
    out = model_on_windows(settings.model, windows_at(rgir, batch, window), windows_at(ndsm, batch, window),
                           settings.device, settings.amp_dtype, settings.channels_last, prepare=fill)
    probabilities = out.logits.float().softmax(dim=1)
    if not settings.attention:
        return probabilities
    alpha = out.attention.float()  # (B, K, window/16, window/16)
    return torch.cat([probabilities, alpha.shape[-2] * alpha.shape[-1] * upsample(alpha, (window, window))], dim=1)


def composed_outputs(settings, rgir, ndsm, rgir_valid, ndsm_valid, codes, batch):
    """window_outputs of the windows at `batch`, each pixel's from the scenario its data allows (`codes`, the
    scenario_map): every scenario runs on the windows that have pixels of it, so a window inside one kind
    of region runs that scenario alone, and a pixel keeps its own scenario's values; 0 where none."""
    window_codes = torch.from_numpy(windows_at(codes, batch, settings.window)).to(settings.device)
    channels = settings.model.config.num_classes * (1 + settings.attention)
    composed = torch.zeros(len(batch), channels, settings.window, settings.window, device=settings.device)
    for scenario, code in SCENARIO_CODES.items():
        inside = window_codes == code  # (B, window, window)
        chosen = inside.flatten(1).any(1).nonzero()[:, 0]
        if len(chosen) == 0:
            continue
        missing = SCENARIOS[scenario]
        outputs = window_outputs(settings, None if missing == "rgir" else rgir, None if missing == "ndsm" else ndsm,
                                 [batch[i] for i in chosen.tolist()], rgir_valid, ndsm_valid)
        composed[chosen] += outputs * inside[chosen, None]
    return composed


@torch.inference_mode()
def predict_strips(settings, rgir, ndsm, rgir_valid=None, ndsm_valid=None):
    """Predicts one image from rgir (H, W, 3) and/or ndsm (H, W) uint8 (None: that modality is
    missing), where `rgir_valid` and `ndsm_valid` ((H, W) bool; None: everywhere) say they have
    data, and yields it top to bottom in strips of rows: dicts with "labels", (h, W) uint8 class
    ids in the scenario each pixel's data allows (NODATA_LABEL where neither modality has data),
    "scenario", (h, W) uint8 that scenario's code (SCENARIO_CODES, NO_SCENARIO), and if asked
    "probabilities" and "attention", (h, W, K) float32 means over the windows covering each
    pixel (0 where no scenario). Windows, batches and summation are evaluate.predict_tile's (runtime's
    window loop), so with data everywhere the labels are the same; but only the rows that windows still
    to come overlap are held (K x about window + batch rows x W floats), never K x H x W."""
    window, device = settings.window, settings.device
    H, W = (rgir if rgir is not None else ndsm).shape[:2]
    has_data = lambda image, valid: valid if image is not None and valid is not None else np.broadcast_to(
        image is not None, (H, W))
    codes = scenario_map(has_data(rgir, rgir_valid), has_data(ndsm, ndsm_valid))
    rgir, ndsm, rgir_valid, ndsm_valid, codes = (None if x is None else data.pad_to_window(x, window)
                                                 for x in (rgir, ndsm, rgir_valid, ndsm_valid, codes))
    padded_h, padded_w = codes.shape
    starts = data.sliding_windows(padded_h, padded_w, window, settings.overlap)
    K = settings.model.config.num_classes
    ys, xs = zip(*starts)
    count_y, count_x = window_coverage(ys, padded_h, window, device), window_coverage(xs, padded_w, window, device)
    held, top, seen = torch.zeros(K * (1 + settings.attention), 0, padded_w, device=device), 0, 0  # rows top, ...
    for batch in window_batches(starts, settings.batch_size, progress=True):
        new_rows = batch[-1][0] + window - top - held.shape[1]
        if new_rows > 0:
            held = torch.cat([held, held.new_zeros(held.shape[0], new_rows, padded_w)], dim=1)
        add_windows(held, batch, composed_outputs(settings, rgir, ndsm, rgir_valid, ndsm_valid, codes, batch),
                    window, top)
        seen += len(batch)
        done = starts[seen][0] if seen < len(starts) else padded_h  # no later window reaches above
        if done > top:
            sums = held[:, : min(done, H) - top, :W]
            scenario = codes[top : top + sums.shape[1], :W]
            labels = sums[:K].argmax(0).to(torch.uint8).cpu().numpy()
            labels[scenario == NO_SCENARIO] = NODATA_LABEL
            strip = {"labels": labels, "scenario": scenario}
            if settings.probabilities or settings.attention:
                means = (sums / (count_y[top : top + sums.shape[1], None] * count_x[:W])).movedim(0, -1).cpu().numpy()
                if settings.probabilities:
                    strip["probabilities"] = means[..., :K]
                if settings.attention:
                    strip["attention"] = means[..., K:]
            yield strip
            held, top = held[:, done - top :], done


# -----------------------------------------------------------------------------
# The outputs, and what made them

@dataclass(frozen=True)
class Output:
    """One kind of output, <name>_<kind>.tif: bands (None: one), how a strip's values are written, its TIFF
    photometric, nodata value (None: none), colour table, and how its overviews reduce 2 x 2 blocks."""

    bands: int | None
    written: callable
    dtype: type = np.uint8
    photometric: str = "minisblack"
    nodata: int | None = None
    colours: np.ndarray | None = None
    reduce: str = "mode"


def outputs_asked(args, K):
    """{kind: Output} of the outputs the flags ask for, labels first. --colour's RGB declares no nodata, as
    GDAL would take 0 in any band for it: the red of a blue building. The labels are a palette image: each
    class's value (ISPRS: its id; one's own data, args.own_data: its value in classes.json) in its colour."""
    classes = own_data.class_table(args.own_data)
    table = {"labels": Output(3, lambda ids: classes.colours[ids], photometric="rgb") if args.colour else
             Output(None, lambda ids: classes.values[ids], photometric="palette", nodata=NODATA_LABEL,
                    colours=classes.colour_table()),
             "probabilities": Output(K, lambda p: np.rint(255 * p).astype(np.uint8), reduce="mean"),
             "attention": Output(K, lambda alpha: alpha, dtype=np.float32, reduce="mean"),
             "scenario": Output(None, lambda codes: codes, nodata=NO_SCENARIO)}
    asked = {"labels": True, "probabilities": args.probabilities, "attention": args.attention,
             "scenario": args.scenario_map}
    return {kind: output for kind, output in table.items() if asked[kind]}


def area_name(rgir_path, ndsm_path):
    """An area's name: its orthophoto's file name without suffix, its NDSM's where it has no orthophoto."""
    return (rgir_path or ndsm_path).stem


DIFFERENCES = {"no record": "an earlier predict.py (no record)", "checkpoint_sha256": "another checkpoint",
               "inputs": "other inputs"}
PIXEL_FLAGS = ("bands", "max_value", "ndsm_unit", "rgir_nodata", "ndsm_nodata", "colour")  # besides the windows


def made_by(args, checkpoint_sha256, pair, window, overlap, amp_dtype):
    """What makes an area's outputs what they are, recorded in each (geotiff.provenance_tag): the checkpoint,
    the input files (None: a modality not given), the windows, the precision and the flags that change pixels."""
    inputs = {flag: None if path is None else {"path": str(path.resolve()), "bytes": path.stat().st_size,
                                               "modified_ns": path.stat().st_mtime_ns}
              for flag, path in zip(("rgir", "ndsm"), pair)}
    record = {"checkpoint_sha256": checkpoint_sha256, "inputs": inputs, "window": window, "overlap": overlap,
              "amp": str(amp_dtype), **{flag: getattr(args, flag) for flag in PIXEL_FLAGS}}
    return json.loads(json.dumps(record))  # as read back: tuples become lists


# -----------------------------------------------------------------------------
# An area, and a run of them


def predict_area(settings, pair, out_dir, args, record, trained_on=None):
    """Reads one input pair (once) and writes OUT/<name>_labels.tif, and _probabilities.tif, _attention.tif and
    _scenario.tif if asked, each recording `record`, after removing the area's old outputs of every kind (an
    area cut off then has none, and no output of an earlier run stays beside new ones). Returns their paths."""
    own = (lambda rgir_path, ndsm_path: own_data.read_layers(rgir_path, ndsm_path, args)) if args.own_data else None
    rgir, ndsm, tags, notices = raster.read_area(*pair, trained_on, args.bands, args.max_value, args.ndsm_unit,
                                                 args.rgir_nodata, args.ndsm_nodata, read_layers=own)
    for notice in notices:
        tqdm.write(notice)
    H, W = (rgir or ndsm).pixels.shape[:2]
    name, outputs = area_name(*pair), outputs_asked(args, settings.model.config.num_classes)
    writers = {}
    try:
        for kind in ("labels", "probabilities", "attention", "scenario"):
            (out_dir / f"{name}_{kind}.tif").unlink(missing_ok=True)
        for kind, output in outputs.items():
            writers[kind] = geotiff.StripWriter(
                out_dir / f"{name}_{kind}.tif", (H, W) + ((output.bands,) if output.bands else ()), output.dtype,
                output.photometric, tags + [geotiff.provenance_tag(record)], output.colours, output.reduce,
                output.nodata)
        (rgir, rgir_valid), (ndsm, ndsm_valid) = ((None, None) if layer is None else (layer.pixels, layer.valid)
                                                  for layer in (rgir, ndsm))
        for strip in predict_strips(settings, rgir, ndsm, rgir_valid, ndsm_valid):
            for kind, writer in writers.items():
                writer.write(outputs[kind].written(strip[kind]))
        for writer in writers.values():
            writer.commit()
    except OSError as error:
        raise DataError(f"--out {out_dir}: cannot write the prediction of {name} ({error.strerror or error}); "
                        "free some space or choose another folder") from error
    finally:
        for writer in writers.values():
            writer.discard()
    return [writer.path for writer in writers.values()]


def failure(error):
    """A failed area's reason, said at once in one line (on stderr, as a user error), and returned."""
    reason = one_line(error)
    tqdm.write(f"error: {reason}", file=sys.stderr)
    return reason


def planned(args, checkpoint_path, checkpoint, window, overlap, device, amp_dtype, rank):
    """The model, every pair, the pairs to predict with the record their outputs will carry, and the failures
    ({area: reason}) of those whose headers show them bad. An area is skipped where its outputs record the
    same (--overwrite: none is); the first process says so, and why others are predicted again."""
    pairs, notices = raster.image_pairs(args.rgir, args.ndsm)
    model = model_from_checkpoint(checkpoint, device, args.compile, args.channels_last)
    if args.attention and not model.config.classwise:
        raise DataError("--attention: this checkpoint's model has no classwise attention (an HF or HF+DLKD variant); "
                        "drop --attention")
    model = FullBatches(model, args.batch_size) if args.compile else model
    checkpoint_sha256, kinds = file_sha256(checkpoint_path), list(outputs_asked(args, model.config.num_classes))
    todo, failures, redone = [], {}, {}
    for pair in pairs:
        name, record = area_name(*pair), made_by(args, checkpoint_sha256, pair, window, overlap, amp_dtype)
        why = "--overwrite" if args.overwrite else geotiff.differences(
            [Path(args.out) / f"{name}_{kind}.tif" for kind in kinds], record)
        try:
            raster.check_same_size(*pair)
        except DataError as error:
            failures[name] = failure(error) if rank == 0 else one_line(error)
            continue
        if why is not None:
            todo.append((pair, record))
        if why not in (None, "--overwrite", "missing"):  # made otherwise: said
            redone.setdefault(DIFFERENCES.get(why, "other flags"), []).append(name)
    skipped = len(pairs) - len(todo) - len(failures)
    notices += [f"notice: {skipped} of {len(pairs)} area(s) skipped: their outputs in {args.out} are complete and made "
                "by this checkpoint, these inputs and flags (--overwrite predicts them again)"] if skipped else []
    notices += [f"notice: {len(names)} area(s) predicted again, their outputs in {args.out} made by {why}: "
                + " ".join(names) for why, names in redone.items()]
    for notice in notices if rank == 0 else []:
        print(notice)
    return model, pairs, todo, failures


def predict(args, checkpoint_path, checkpoint, window, overlap, device, amp_dtype):
    """Label maps of new imagery, one per orthophoto/NDSM pair; under torchrun each process claims the next
    area no process has, predicts it and writes it. An area whose input is bad, whose write fails or that
    runs out of memory is said in one line by the process that meets it, and the others go on; the first
    process waits for every area, writes a mosaic of each output for folders, ends with a summary line and
    exits with status 2 if an area failed. No collective follows the start, so none can time out."""
    device, rank, world = setup_distributed(device)
    plan = lambda: planned(args, checkpoint_path, checkpoint, window, overlap, device, amp_dtype, rank)
    model, pairs, todo, failures = stop_together(plan, device, rank, world)
    # the first process makes the folder (another's write test could remove the test file of the first), and
    # in it one for this run's claims, named alike in every process
    fresh, run = not Path(args.out).exists(), first_process_value(f".predict-run-{time.time_ns():x}", world)
    out_dir = stop_together(lambda: started(args.out, run) if rank == 0 else Path(args.out), device, rank, world)
    if world > 1:
        leave_distributed()  # every process is past the start: no collective from here on
    settings = Settings(model, window, overlap, args.batch_size, device, amp_dtype, args.channels_last,
                        args.probabilities, args.attention)
    start, written = time.perf_counter(), 0
    for pair, record in tqdm(todo, desc="predicting", unit="area", disable=None if rank == 0 else True):
        if not claim(out_dir / run, area_name(*pair)):
            continue  # another process has it
        try:
            paths = predict_area(settings, pair, out_dir, args, record, checkpoint.get("dataset"))
            tqdm.write("wrote " + ", ".join(map(str, paths)))
            written, reason = written + 1, ""
        except DataError as error:  # bad input, a failed write (a full disk): said, and the next area tried
            reason = failure(error)
        except (torch.OutOfMemoryError, MemoryError):
            torch.cuda.empty_cache() if device.type == "cuda" else None
            reason = failure(DataError(f"{area_name(*pair)}: out of memory with --batch-size {args.batch_size}; "
                                       "lower --batch-size (or --patch) for this area"))
        report(out_dir / run, area_name(*pair), reason)
    by = f" (process {rank} of {world})" if world > 1 else ""
    print(f"wrote the predictions of {written} image(s) to {out_dir} in {time.perf_counter() - start:.1f} s{by}")
    if rank == 0:
        finish(args, out_dir, run, pairs, todo, failures, fresh, model.config.num_classes)


def started(out, run):
    """The output folder, written to, with an empty folder `run` for this run's claims (earlier runs' removed)."""
    out_dir = writable_dir(out, "--out")
    for earlier in out_dir.glob(".predict-run-*"):
        shutil.rmtree(earlier, ignore_errors=True)
    (out_dir / run).mkdir()
    return out_dir


def finish(args, out_dir, run, pairs, todo, failures, fresh, K):
    """Waits for every area to predict; then writes the mosaics of the areas that did not fail (for folder inputs),
    prints the summary line and exits with status 2 if any area failed. A folder this run made and wrote
    nothing in is removed."""
    outcomes = results(out_dir / run, [area_name(*pair) for pair, _ in todo])
    shutil.rmtree(out_dir / run)
    skipped = len(pairs) - len(todo) - len(failures)
    failures = failures | {name: reason for name, reason in outcomes.items() if reason}
    names = [area_name(*pair) for pair in pairs]
    complete = [name for name in names if name not in failures]
    if complete and Path(args.rgir or args.ndsm).is_dir():
        for path in geotiff.write_mosaics(out_dir, complete, list(outputs_asked(args, K))):
            print(f"wrote {path}")
    if fresh and not complete and not any(out_dir.iterdir()):
        out_dir.rmdir()  # every area failed: nothing written
    failed = [f"{name} ({failures[name]})" for name in names if name in failures]
    print(f"{len(pairs)} area(s): {len(complete) - skipped} predicted, {skipped} skipped (outputs complete), "
          f"{len(failed)} failed" + (": " + "; ".join(failed) if failed else ""))
    if failures:
        raise SystemExit(2)


# -----------------------------------------------------------------------------
# Command line


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
                   help="predict every area again (default: an area whose outputs are all in --out, made by this "
                        "checkpoint, these inputs and flags, is skipped)")
    add_inference_flags(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device, amp_dtype, checkpoint_path, checkpoint, window, overlap = inference_setup(args)
    predict(args, checkpoint_path, checkpoint, window, overlap, device, amp_dtype)


if __name__ == "__main__":
    data.exit_on_user_error(main)
