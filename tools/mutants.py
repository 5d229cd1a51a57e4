"""Mutation testing of the modules whose slips are quiet (MUTANTS' files): does a slip in them fail a test?

Each mutant below is a realistic one-line slip (a comparison turned, a term dropped, a tag left out).
It is applied to a copy of the repository's tracked files, then the tests of its file are run there,
stopping at the first failure: a failing test kills the mutant. One that survives is a behaviour no test
pins, unless it is marked equivalent: it changes no output, and its entry says why. docs/testing.md has
the last scores.

    python tools/mutants.py raster.py            # one file's mutants (on 2 cores: 1 to 8 minutes a file)
    python tools/mutants.py                      # every file
    python tools/mutants.py --list               # the mutants, without running them

The tests must pass without any mutant first, or the file is skipped. Exit status 1 when they do not,
when a mutant not marked equivalent survives, or when one no longer applies (the text it changes is gone
or appears twice: bring its entry up to date).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    before: str  # text that occurs exactly once in the file
    after: str
    slip: str  # what the change does
    equivalent: str = ""  # why no output changes, for a mutant that no test can kill


# The tests that exercise each file, the quickest to fail first.
TESTS = {
    "raster.py": ["tests/test_imagery.py", "tests/test_nodata.py", "tests/test_predict.py"],
    "predict.py": ["tests/test_predict.py", "tests/test_predict_scale.py", "tests/test_nodata.py", "tests/test_imagery.py"],
    "geotiff.py": ["tests/test_predict_scale.py", "tests/test_predict.py", "tests/test_nodata.py"],
    "stats.py": ["tests/test_stats.py", "tests/test_intervals.py"],
    "losses.py": ["tests/test_losses.py"],
    "train.py": ["tests/test_pins.py", "tests/test_stop_status.py", "tests/test_torchrun_pins.py", "tests/test_train_eval.py",
                 "tests/test_distributed.py", "tests/test_precision.py"],
    "evaluate.py": ["tests/test_pins.py", "tests/test_train_eval.py"],
    "data.py": ["tests/test_pins.py", "tests/test_data.py"],
    "reproduce.py": ["tests/test_pins.py", "tests/test_reproduce.py"],
    "report.py": ["tests/test_pins.py", "tests/test_reproduce.py", "tests/test_stats.py"],
    "isprs.py": ["tests/test_data.py", "tests/test_layouts.py"],
    "distributed.py": ["tests/test_torchrun_pins.py", "tests/test_distributed.py"],
    "runtime.py": ["tests/test_pins.py", "tests/test_precision.py", "tests/test_train_eval.py", "tests/test_distributed.py"],
    "dis2.py": ["tests/test_pins.py", "tests/test_model.py", "tests/test_losses.py"],
    "synth.py": ["tests/test_pins.py", "tests/test_data.py", "tests/test_synthetic.py"],
}

MUTANTS = {
    "raster.py": [
        Mutant("everywhere &= bands[..., i] == nodata", "everywhere |= bands[..., i] == nodata",
               "a pixel is nodata where any band, not every band, holds the value"),
        Mutant("if bands.dtype == np.uint8 and (maximum == 255).all():", "if bands.dtype == np.uint8:",
               "8-bit data is taken as it is whatever maximum it declares"),
        Mutant("min(2**bits - 1, largest)", "min(2**bits, largest)", "12-bit data's maximum taken as 4096"),
        Mutant("if None not in sizes and sizes[0] != sizes[1]:", "if None not in sizes and sizes[0][0] != sizes[1][0]:",
               "modalities compared by height alone"),
        Mutant("for path, layer in given.values() if layer.georeference",
               "for path, layer in reversed(list(given.values())) if layer.georeference",
               "the NDSM's georeferencing written over the orthophoto's"),
        Mutant("if len(empty) == len(given):", "if empty:", "one modality without data stops the run"),
        Mutant("return None if text is None else float(text)", "return None if text is None else int(text)",
               "GDAL_NODATA read as an integer"),
        Mutant("GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)",
               "GEOTIFF_TAGS = (33550, 33922, 34735, 34736, 34737)", "ModelTransformation not copied"),
        Mutant("        return heights, valid, notices", "        return pixels[..., 0], valid, notices",
               "an 8-bit NDSM keeps its nodata values"),
        Mutant("np.maximum(band, 0, out=band)", "", "negative values of signed data not clipped"),
        Mutant("        band += top // 2\n", "", "scaled values truncated, not rounded"),
        Mutant("valid &= raster.pixels[..., i] > 0", "valid &= raster.pixels[..., i] >= 0", "alpha 0 taken as data"),
        Mutant("valid &= ~np.isnan(bands).any(-1)", "valid &= ~np.isnan(bands).all(-1)",
               "a pixel is NaN where every band, not any band, is",
               equivalent="the float bands checked for NaN are those of a one-band NDSM or DSM (orthophotos must "
                          "be integers), and for one band any and all are the same"),
        Mutant("alpha = [] if named_every_band else raster.alpha", "alpha = raster.alpha",
               "--bands naming every band still drops the band tagged as alpha"),
        Mutant("maximum = maximum[picks] if max_value is None", "maximum = maximum[:3] if max_value is None",
               "the declared maxima of the first three bands, not of IR, R and G"),
        Mutant('bands.dtype == np.float32 and f"{abs(nodata):g}"', 'f"{abs(nodata):g}"',
               "nodata snapped to the float32 limits in float64 files too"),
        Mutant('lambda record: "GDAL_NODATA" not in record.getMessage()',
               'lambda record: "GDAL_NODATA" in record.getMessage()', "tifffile's GDAL_NODATA warnings let through"),
        Mutant("max_value > np.iinfo(pixels.dtype).max:", "max_value >= np.iinfo(pixels.dtype).max:",
               "--max-value at the data type's top refused"),
        Mutant("if np.size(declared) not in (1, samples):", "if np.size(declared) != samples:",
               "a single MaxSampleValue for every band refused"),
        Mutant("+ int(maximum.max())  #", "+ int(maximum.max()) // 2  #",
               "int32 chosen where the maximum itself does not fit it"),
        Mutant("if keys.get(1024) == 2:", "if keys.get(1024) == 1:", "projected, not geographic, keys give no size"),
        Mutant("mask = mask_page.asarray() > 0", "mask = mask_page.asarray() == 255",
               "a 1-bit mask read as an 8-bit one"),
        Mutant("np.rint(metres * NDSM_LEVELS_PER_METRE)", "(metres * NDSM_LEVELS_PER_METRE)",
               "metre heights truncated, not rounded"),
    ],
    "predict.py": [
        Mutant("        image is not None, (H, W))", "        True, (H, W))", "an absent modality taken as valid"),
        Mutant('codes[rgir_valid & ndsm_valid] = SCENARIO_CODES["full"]',
               'codes[rgir_valid | ndsm_valid] = SCENARIO_CODES["full"]', "full where either modality has data"),
        Mutant("            labels[scenario == NO_SCENARIO] = NODATA_LABEL\n", "",
               "pixels without data keep a class label"),
        Mutant("np.rint(255 * p).astype(np.uint8)", "(255 * p).astype(np.uint8)", "probabilities truncated, not rounded"),
        Mutant("count_y[top : top + sums.shape[1], None] * count_x[:W]", "count_y[top : top + sums.shape[1], None]",
               "means divided by the rows' window count alone"),
        Mutant("done = starts[seen][0] if", "done = starts[seen - 1][0] if",
               "rows given out up to the batch's last window, not the next batch's first",
               equivalent="windows come in order of rows, so no later window reaches above either: the same rows "
                          "are given out, some a batch later"),
        Mutant("composed[chosen] += outputs * inside[chosen, None]", "composed[chosen] += outputs",
               "every scenario run on a window adds to all its pixels"),
        Mutant("        if why is not None:\n            todo.append", '        if why == "missing":\n            todo.append',
               "a rerun redoes only the areas with an output missing, whatever made the others"),
        Mutant('"inputs": inputs, "window"', '"window"', "the record of what made an area leaves out its inputs"),
        Mutant('"ndsm_nodata", "colour")', '"ndsm_nodata")', "--colour not among the flags that change pixels"),
        Mutant('            (out_dir / f"{name}_{kind}.tif").unlink(missing_ok=True)\n', "",
               "an area predicted again keeps its old outputs until the new ones are renamed"),
        Mutant("except (torch.OutOfMemoryError, MemoryError):", "except MemoryError:", "a GPU out of memory stops the run"),
        Mutant('first_process_value(f".predict-run-{time.time_ns():x}", world)', 'f".predict-run-{time.time_ns():x}"',
               "each process names this run's claim folder itself"),
        Mutant("skipped = len(pairs) - len(todo) - len(failures)\n    failures =",
               "skipped = len(pairs) - len(todo)\n    failures =", "areas failed at their header counted as skipped"),
    ],
    "geotiff.py": [
        Mutant("extratags=self.nodata_tags + ([] if level else self.tags)",
               "extratags=[] if level else self.nodata_tags + self.tags", "overviews without the nodata value"),
        Mutant("(corners.sum(0, dtype=np.uint16) + 2) // 4", "(corners.sum(0, dtype=np.uint16) + 1) // 4",
               "uint8 overview means rounded half down"),
        Mutant("        for temporary in self.temporaries:\n            temporary.unlink(missing_ok=True)",
               "        for temporary in self.temporaries[1:]:\n            temporary.unlink(missing_ok=True)",
               "a writer discarded after a failure leaves its strips' temporary"),
        Mutant('    with open(temporary, "rb") as file:\n        os.fsync(file.fileno())\n', "",
               "a file renamed before its bytes are on disk"),
        Mutant("    os.replace(temporary, path)\n    sync_folder(path.parent)", "    os.replace(temporary, path)",
               "a rename not made durable"),
        Mutant("if found != record:", 'if found.get("checkpoint_sha256") != record.get("checkpoint_sha256"):',
               "a rerun compares only the checkpoint"),
        Mutant("        if m[1] or m[4]:\n            return None\n", "", "a rotated ModelTransformation placed"),
        Mutant("corner = (corner[0] - size[0] / 2, corner[1] - size[1] / 2)", "corner = corner",
               "the PixelIsPoint half-pixel shift left out"),
        Mutant("corner = (corner[0] - size[0] / 2, corner[1] - size[1] / 2)",
               "corner = (corner[0] + size[0] / 2, corner[1] + size[1] / 2)", "the PixelIsPoint shift reversed"),
        Mutant("if code and code != USER_DEFINED else", "if code else", "a user-defined system written as EPSG:32767"),
        Mutant("PIXEL_SIZE_TOLERANCE = 1e-6", "PIXEL_SIZE_TOLERANCE = 0.0", "pixel sizes compared as exact floats"),
        Mutant('ET.SubElement(source, "SrcRect", xOff="0", yOff="0"',
               'ET.SubElement(source, "SrcRect", xOff=f"{x:.6f}", yOff=f"{y:.6f}"', "SrcRect given DstRect's offsets"),
        Mutant('                if nodata is not None:\n                    ET.SubElement(source, "NODATA")',
               '                if False:\n                    ET.SubElement(source, "NODATA")',
               "the sources' NODATA dropped: an area's pixels without data cover its neighbour's"),
        Mutant('            if nodata is not None:\n                ET.SubElement(element, "NoDataValue")',
               '            if False:\n                ET.SubElement(element, "NoDataValue")', "the bands' NoDataValue dropped"),
        Mutant("min(y for _, y in offsets.values())", "max(y for _, y in offsets.values())",
               "the mosaic's top edge at the lowest area's"),
        Mutant("grids[inside[0]][1][1] + top * size[1])", "grids[inside[0]][1][1] - top * size[1])",
               "the mosaic's corner moved the wrong way from the first area's"),
    ],
    "stats.py": [
        Mutant("2.0484, 2.0452, 2.0423)", "2.0484, 2.0425, 2.0423)", "two digits of t(0.975, 29) transposed"),
        Mutant("if df <= len(T_QUANTILES):", "if df < len(T_QUANTILES):", "the table's last entry left unused"),
        Mutant("z = 1.959964", "z = 1.96", "the normal quantile rounded",
               equivalent="within the expansion's own error: it raises t(0.975, df > 30) by at most 4e-5, where the "
                          "expansion is low by 9e-5 at 31 and 4e-5 at 40 degrees of freedom"),
        Mutant("confusion[..., CLUTTER, :] = 0", "confusion[..., :, CLUTTER] = 0",
               "clutter predictions dropped instead of clutter references"),
        Mutant("replicates.mean(0).std(ddof=1)", "replicates.mean(0).std(ddof=0)",
               "the bootstrap's standard error biased"),
        Mutant("    df = n - 1\n", "    df = n\n", "the interval over seeds and tiles with one degree of freedom too many"),
        Mutant("var_tiles = max(float(shared), 0.0) * T / (T - 1)", "var_tiles = max(float(shared), 0.0)",
               "the shared tile variance without its small-sample correction"),
        Mutant("integers(0, T, (resamples, T))", "integers(0, T - 1, (resamples, T))", "the last tile never drawn"),
        Mutant("(scale if relative else windows)", "(windows if relative else scale)", "relative and raw swapped"),
        Mutant('return "holds" if verdicts == {direction}', 'return "holds" if direction in verdicts',
               "a claim holds when any difference is resolved its way"),
    ],
    "losses.py": [
        Mutant(".pow(2).mean()\n", ".abs().mean()\n", "Eq. 2's cosine not squared"),
        Mutant("kl = kl.mean(dim=1) if class_mean else kl.sum(dim=1)",
               "kl = kl.sum(dim=1) if class_mean else kl.mean(dim=1)", "the recipes' KL reductions swapped"),
        Mutant("return T**2 * kl.mean()", "return T * kl.mean()", "T instead of T^2"),
        Mutant("unit(at_least_fp32(t.detach()))", "unit(at_least_fp32(t))", "no stop-gradient on the teacher"),
        Mutant("dice = (2 * intersection + smooth) /", "dice = (2 * intersection) /", "Dice smoothed below only"),
        Mutant("weights.sum((1, 2)).clamp_min(torch.finfo(nll.dtype).tiny)", "weights.sum((1, 2))",
               "an image without labelled pixels divides by 0"),
        Mutant("f[present].median() / f[present]", "f.median() / f[present]",
               "the median taken over absent classes too"),
        Mutant("levels = slice(AUTHORS_ORTH_LEVELS) if authors else slice(None)",
               "levels = slice(None) if authors else slice(AUTHORS_ORTH_LEVELS)", "the recipes' levels swapped"),
        Mutant("for out in (full, miss) for y in out.aux_logits", "for out in (full,) for y in out.aux_logits",
               "Eq. 13 over the full scenario alone"),
    ],
    "train.py": [
        Mutant("            values /= world\n", "", "the losses logged summed over the processes, not averaged"),
        Mutant('range(state["step_in_epoch"] * global_batch,', 'range(state["step_in_epoch"] * batch_size,',
               "a mid-epoch resume skips one process's batches, not the global batches"),
        Mutant("return min(1.0, (step + 1) / warmup)", "return min(1.0, step / warmup)",
               "the first optimiser step at learning rate 0"),
        Mutant("warmup = min(500, total_steps // 10 + 1)", "warmup = min(500, total_steps // 10)",
               "the warm-up a step shorter"),
        Mutant("if scaler.get_scale() >= scale:", "if scaler.get_scale() > scale:",
               "the schedule stepped only when the fp16 scale grows"),
        Mutant('return 128 + signal.Signals[stop.signal or "SIGTERM"]', "return 0",
               "a stopped run exits 0, as a finished one"),
        Mutant("< p_missing_rgir else", "> p_missing_rgir else", "RGIR missing at rate 1 - p"),
        Mutant('return path / "last.pt" if path.is_dir() else path', 'return path / "best.pt" if path.is_dir() else path',
               "--resume DIR continues from best.pt"),
        Mutant('RESUMABLE_OVERRIDES = ("epochs", "device",', 'RESUMABLE_OVERRIDES = ("device",',
               "--epochs of a resumed run ignored"),
        Mutant("steps_per_epoch = args.samples_per_epoch // global_batch",
               "steps_per_epoch = args.samples_per_epoch // args.batch_size",
               "the steps per epoch counted with one process's batch"),
        Mutant("step >= AUTHORS_DISTILL_START * total_steps", "step > AUTHORS_DISTILL_START * total_steps",
               "the authors' distillation switched on a step late"),
    ],
    "evaluate.py": [
        Mutant("distances[key][0] += distance.sum().item()\n            distances[key][1] += len(batch)",
               "distances[key][0] += distance.mean().item()\n            distances[key][1] += 1",
               "Table 3's distance averaged per batch of windows, not per window"),
        Mutant('distance = outputs["full"].z.float().norm(dim=1).mean(dim=(1, 2))',
               'distance = outputs["full"].z.float().norm(dim=1).mean()', "the norm of Z averaged over the batch"),
        Mutant("f1 = 100 * 2 * tp / (2 * tp + fp + fn)", "f1 = 100 * 2 * tp / (tp + fp + fn)", "F1's denominator"),
        Mutant('"mF1": value(np.nanmean(f1[scored]))', '"mF1": value(np.nanmean(f1))', "clutter averaged into mF1"),
        Mutant("value(100 * tp.sum() / confusion.sum())", "value(100 * tp[:5].sum() / confusion.sum())",
               "clutter's correct pixels left out of OA"),
        Mutant("valid = label != IGNORE_INDEX", "valid = label <= IGNORE_INDEX", "the eroded boundary scored"),
        Mutant("    model.eval()  # batch norm", "    model.train()  # batch norm",
               "tiles scored with the batch's statistics"),
        Mutant("label = tile.label_eroded if eroded else tile.label", "label = tile.label if eroded else tile.label_eroded",
               "--eroded swapped"),
        Mutant('"rgir": ["missing_rgir"], "ndsm": ["missing_ndsm"]', '"rgir": ["missing_ndsm"], "ndsm": ["missing_rgir"]',
               "--missing rgir scores the NDSM missing"),
    ],
    "data.py": [
        Mutant('"2_13 2_14 3_13', '"2_14 3_13', "Potsdam's test split loses a tile"),
        Mutant('VAL_HOLDOUT = {"vaihingen": ["area5", "area15", "area21", "area30"]',
               'VAL_HOLDOUT = {"vaihingen": ["area5", "area15", "area21", "area31"]',
               "a test tile held out for validation, a training tile kept"),
        Mutant("return [name for name in _ISPRS_TRAIN[dataset] if name not in VAL_HOLDOUT[dataset]]",
               "return list(_ISPRS_TRAIN[dataset])", "the validation tiles trained on"),
        Mutant("RGIR_STD = torch.tensor([0.229, 0.224, 0.225])", "RGIR_STD = torch.tensor([0.229, 0.224, 0.252])",
               "an ImageNet standard deviation mistyped"),
        Mutant("NDSM_MEAN, NDSM_STD = 0.14, 0.19", "NDSM_MEAN, NDSM_STD = 0.19, 0.14", "the NDSM's shift and scale swapped"),
        Mutant("range(0, size - window, window - overlap)", "range(0, size - window, window)",
               "sliding windows without overlap"),
        Mutant("np.random.default_rng((self.seed, self.epoch, i))", "np.random.default_rng((self.seed, i))",
               "the same patches every epoch"),
        Mutant("rng.integers(tile.label.shape[1] - p + 1)", "rng.integers(tile.label.shape[0] - p + 1)",
               "a patch's column drawn over the tile's height"),
        Mutant("normalise(augment(tile.rgir), augment(tile.ndsm))", "normalise(augment(tile.rgir), tile.ndsm[y : y + p, x : x + p])",
               "the NDSM cropped but not rotated or flipped with the rest"),
        Mutant("self.weights = areas / areas.sum()", "self.weights = np.full(len(areas), 1 / len(areas))",
               "every tile drawn equally often whatever its area"),
        Mutant('mode="reflect" if reflectable else "edge"', 'mode="edge" if reflectable else "reflect"',
               "padding repeats the edge where it could reflect"),
    ],
    "isprs.py": [
        Mutant("_ID_OF_BITS[0] = IGNORE_INDEX  # black\n", "", "black labels refused as off the palette"),
    ],
    "report.py": [
        Mutant('[(1, "dis2-2x"), (-1, "hf-2x"), (-1, "dis2"), (1, "hf")]', '[(1, "dis2-2x"), (-1, "hf-2x"), (1, "dis2"), (-1, "hf")]',
               "the budget contrast adds the margins instead of subtracting"),
        Mutant('HF_PAPER = {"full": 0.69, "missing_rgir": 5.62,', 'HF_PAPER = {"full": 0.69, "missing_rgir": 5.26,',
               "the paper's value of P1 mistyped"),
    ],
    "reproduce.py": [
        Mutant("[args.seed + k for k in range(", "[k for k in range(", "--seed ignored: seeds 0..n-1"),
        Mutant("args.patch, default_overlap(args.patch),", "args.patch, 0,", "test tiles scored without window overlap"),
        Mutant("return losses[-1], (before - losses[-1]) / before", "return losses[-1], (before - losses[-1]) / losses[-1]",
               "the loss drop divided by the final loss"),
        Mutant("before = losses[max(len(losses) - 1 - len(losses) // 4, 0)]",
               "before = losses[max(len(losses) - len(losses) // 4, 0)]", "the last quarter an epoch short"),
        Mutant('epochs = args.epochs * settings.get("budget", 1)', "epochs = args.epochs",
               "twice the budget trained at the budget"),
        Mutant('float(row["seg_full"]) + float(row["seg_miss"])', 'float(row["loss"])',
               "the training curve of the whole objective, not of L_seg"),
        Mutant('"epochs": epochs, "seed": seed,', '"epochs": epochs, "seed": args.seed,', "every run trained with the first seed"),
        Mutant('"dis2-2x": dict(ablation="dis2", layout="shared", budget=2, seeds=3, baseline="hf-2x")',
               '"dis2-2x": dict(ablation="dis2", layout="shared", budget=2, seeds=3)',
               "DIS2 at twice the budget paired with HF at the budget"),
    ],
    "distributed.py": [
        Mutant('device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))', 'device = torch.device("cuda", int(os.environ["RANK"]))',
               "the GPU chosen by RANK, not LOCAL_RANK"),
        Mutant("running_var.lerp_(var * count / (count - 1), momentum)", "running_var.lerp_(var, momentum)",
               "the running variance biased"),
        Mutant("running_var.lerp_(var * count / (count - 1), momentum)", "running_var.lerp_(var * n / (n - 1), momentum)",
               "the running variance corrected with one process's count"),
        Mutant("running_mean.lerp_(mean, momentum)", "running_mean.lerp_(mean, 1 - momentum)",
               "momentum taken as the weight of the old running mean"),
        Mutant("local_mean.new_full((1,), n)]", "local_mean.new_full((1,), 1.0)]", "processes counted instead of values"),
        Mutant("total = dist_nn.all_reduce(local)", "total = dist_nn.all_reduce(local.detach())",
               "the statistics' backward pass not synchronised"),
        Mutant('"nccl" if device.type == "cuda" else "gloo"', '"gloo"', "GPUs communicate through Gloo"),
        Mutant("        synced.load_state_dict(child.state_dict())\n", "",
               "synchronised batch norm starts from fresh statistics and weights"),
    ],
    "runtime.py": [
        Mutant("tf32 = amp_dtype is not None", "tf32 = True", "--amp off lets cuDNN and matrix products use TF32"),
        Mutant("sums[:, y - top : y - top + window, x : x + window] += window_values",
               "sums[:, y - top : y - top + window, x : x + window] = window_values",
               "the last window's probabilities replace, not join, those of the windows it overlaps"),
        Mutant("return candidates[-1]", "return candidates[0]", "the oldest run taken"),
        Mutant('sorted(Path(runs).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)', 'sorted(Path(runs).glob(f"*/{name}"))',
               "the last run by name taken, not the latest"),
        Mutant("    return window // 4", "    return window // 2", "the default overlap half a window"),
        Mutant("if not 0 <= overlap < window:", "if not 0 <= overlap <= window:", "--overlap of a whole window accepted"),
        Mutant("if patch % STRIDE:", "if patch % 8:", "a patch the encoders cannot halve four times accepted"),
        Mutant("return torch.cuda.get_device_capability(device) >= (8, 0)", "return torch.cuda.get_device_capability(device) > (8, 0)",
               "an A100 taken for a GPU without bf16"),
        Mutant('PRECISIONS = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}',
               'PRECISIONS = {"off": None, "bf16": torch.float16, "fp16": torch.bfloat16}', "--amp's dtypes swapped"),
        Mutant('return device.type == "cuda" if channels_last is None else channels_last',
               'return device.type == "cuda" or bool(channels_last)', "--no-channels-last ignored on CUDA"),
        Mutant("        tmp.unlink(missing_ok=True)\n        raise", "        raise", "a failed save leaves its temporary file"),
    ],
    "dis2.py": [
        Mutant("ab = (tokens[:, 1 : 1 + 2 * h * w]", "ab = (tokens[:, 0 : 2 * h * w]", "the slots' tokens read one place early"),
        Mutant("reshape(B, 2, h, w, -1).permute(0, 1, 4, 2, 3)", "reshape(B, 2, h, w, -1).permute(0, 1, 4, 3, 2)",
               "the token grid read transposed"),
        Mutant("tokens_b = self.proj_b(b).flatten(2).transpose(1, 2) + pos[1]",
               "tokens_b = self.proj_b(b).flatten(2).transpose(1, 2) + pos[0]", "both slots given slot a's positions"),
        Mutant("fusion_token = tokens[:, 0]  #", "fusion_token = tokens[:, -1]  #", "the pooled F_{L-1} token taken for t*"),
        Mutant("m = (h * w) * alpha.to(dtype)", "m = alpha.to(dtype)", "M_k not rescaled by h*w"),
        Mutant("names[missing] = f\"{OTHER[missing]}_supp\"", "names[missing] = f\"{missing}_supp\"",
               "the missing modality's own Supplement branch fills its slot"),
        Mutant('distill = ("student" if exists(missing) else "teacher")', 'distill = ("teacher" if exists(missing) else "student")',
               "teacher and student swapped"),
        Mutant("uni = {m: y for m, y in uni_logits.items() if m != missing}", "uni = dict(uni_logits)",
               "L_uni of the missing modality's head kept"),
        Mutant("for m in supplements if self.config.dlkd else []:", "for m in supplements:",
               "HF runs Supplement encoders, which then fill its missing slot"),
        Mutant("weights = self.score(x).flatten(2).softmax(dim=-1)", "weights = self.score(x).flatten(2).softmax(dim=1)",
               "attention pooling's softmax over the single score channel"),
    ],
    "synth.py": [
        Mutant("rng = np.random.default_rng((seed, k))\n        rgir, ndsm, label", "rng = np.random.default_rng(seed)\n        rgir, ndsm, label",
               "every tile the same scene"),
        Mutant("(size + size * (k % 5) // 8 + k % 3, size)", "(size, size)", "Vaihingen tiles all square"),
        Mutant("_max_filter(border, BOUNDARY_RADIUS - 1)", "_max_filter(border, BOUNDARY_RADIUS)",
               "the eroded band a pixel wider"),
        Mutant("if not 1 <= count <= total:", "if not 1 <= count < total:", "every ISPRS area at once refused"),
        Mutant("if queue][: count - len(names)]", "if queue]", "more tiles written than asked for"),
        Mutant("_dense_matching(metres * table[\"matched\"][ids], rng)", "_dense_matching(metres, rng)",
               "every object matched in the NDSM at its full height"),
        Mutant("dataset = known_dataset(dataset)\n    if size < 16 or seed < 0:", "dataset = known_dataset(dataset)\n    if size < 16:",
               "a negative seed reaches numpy"),
        Mutant("tifffile.imwrite(path[\"eroded\"], labels_to_rgb(_erode_boundaries(label))",
               "tifffile.imwrite(path[\"eroded\"], labels_to_rgb(label)", "the eroded label written uneroded"),
    ],
}


def copy_repository(destination: Path):
    """The tracked files as they are in the working tree, changes not yet committed included."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a tracked file deleted in the working tree is left out
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def tests_pass(copy: Path, file: str, timeout: int) -> bool:
    """Whether the tests of `file` pass in the copy, stopping at the first failure; a hang fails."""
    # No bytecode: a mutant of the source's size, written within the second, would pass for its cached original.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS[file]],
                                cwd=copy, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def outcome(copy: Path, file: str, mutant: Mutant, timeout: int) -> str:
    """killed, survived, or not applicable, for one mutant of `file` in the copy."""
    path = copy / file
    source = path.read_text()
    if source.count(mutant.before) != 1:
        return "not applicable"
    path.write_text(source.replace(mutant.before, mutant.after))
    try:
        return "survived" if tests_pass(copy, file, timeout) else "killed"
    finally:
        path.write_text(source)


def main(argv=None):
    p = argparse.ArgumentParser(description="Mutation testing: does a realistic slip in a module fail its tests?")
    p.add_argument("files", nargs="*", metavar="FILE", help=f"the files to mutate: {', '.join(MUTANTS)} (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutants and stop")
    p.add_argument("--timeout", type=int, default=900, help="seconds one mutant's tests may take (default 900)")
    args = p.parse_args(argv)
    unknown = [file for file in args.files if file not in MUTANTS]
    if unknown:
        p.error(f"no mutants of {', '.join(unknown)}; the files are {', '.join(MUTANTS)}")
    files = args.files or list(MUTANTS)
    if args.list:
        for file in files:
            for mutant in MUTANTS[file]:
                print(f"{file}: {mutant.slip}" + (" (equivalent)" if mutant.equivalent else ""))
        return 0
    failed = False
    with tempfile.TemporaryDirectory(prefix="mutants-") as temporary:
        copy = Path(temporary)
        copy_repository(copy)
        for file in files:
            if not tests_pass(copy, file, args.timeout):  # else every mutant would pass for killed
                print(f"{file}: its tests fail without any mutant ({' '.join(TESTS[file])}); fix them first",
                      flush=True)
                failed = True
                continue
            start, counts = time.perf_counter(), {"killed": 0, "survived": 0, "not applicable": 0}
            for mutant in MUTANTS[file]:
                result = outcome(copy, file, mutant, args.timeout)
                counts[result] += 1
                note = f" (equivalent: {mutant.equivalent})" if result == "survived" and mutant.equivalent else ""
                failed |= result == "not applicable" or (result == "survived" and not mutant.equivalent)
                print(f"{result:>14}  {file}: {mutant.slip}{note}", flush=True)
            print(f"{file}: {counts['killed']} of {len(MUTANTS[file])} mutants killed, {counts['survived']} survived, "
                  f"{counts['not applicable']} not applicable, in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
