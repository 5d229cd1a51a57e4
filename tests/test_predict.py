"""predict.py: maps of new imagery, georeferenced, from either modality alone, in strips; bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import data
import raster
import evaluate
import geotiff
import predict as predict_py
import runtime
from dis2 import DIS2, DIS2Config

ROOT = Path(__file__).resolve().parents[1]
PATCH = 32  # the tiny model's training patch: the default window, with a quarter (8 px) overlap
CPU = torch.device("cpu")
# Georeferencing as a GIS writes it: UTM zone 32N, 9 cm pixels, the top-left corner's coordinates
GEOREFERENCE = [
    (33550, "d", 3, (0.09, 0.09, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 497000.0, 5420000.0, 0.0), True),
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632), True),
    (34736, "d", 1, (0.0,), True),
    (34737, "s", 0, "WGS 84 / UTM zone 32N|", True),
]


def tiny_checkpoint(path, dataset=None, **config):
    """An untrained tiny model, saved with what evaluate.py reads of a checkpoint from train.py
    (and the dataset it was trained on, if given: predict.py's pixel-size notice reads it)."""
    torch.manual_seed(0)
    model = DIS2(DIS2Config(width=4, embed_dim=16, heads=2, class_width=4, pos_size=PATCH, **config))
    for name, buffer in model.named_buffers():  # batch-norm statistics that make the maps vary, as trained ones do
        kind = name.rsplit(".", 1)[-1]  # running_mean, or running_mean_<scenario> in fusion and decoder
        if kind.startswith("running_mean"):
            buffer.normal_(0, 0.5)
        elif kind.startswith("running_var"):
            buffer.uniform_(0.05, 0.5)
    torch.save({"format": runtime.CHECKPOINT_FORMAT, "config": runtime.config_dict(model.config),
                "model": model.state_dict(), "train_args": {"patch": PATCH},
                **({"dataset": dataset} if dataset else {})}, path)
    return path


def predict(*argv):
    predict_py.main(["--batch-size", "3", *map(str, argv)])


def refused(capsys, *argv):
    """The one line of a run that stops with a user error (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        data.exit_on_user_error(lambda: predict(*argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def labels(checkpoint, out, *inputs):
    """The label map predict.py writes for these inputs (flags and paths)."""
    predict("--out", out, "--checkpoint", checkpoint, *inputs)
    (written,) = Path(out).glob("*_labels.tif")
    return tifffile.imread(written)


def refused_labels(capsys, checkpoint, tmp_path, *inputs):
    """The one line of a prediction that stops with a user error (exit status 2), and nothing written."""
    line = refused(capsys, "--out", tmp_path / "out", "--checkpoint", checkpoint, *inputs)
    assert not (tmp_path / "out").exists()
    return line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return runtime.model_from_checkpoint(runtime.load_checkpoint(checkpoint), CPU)


def scene(height=75, width=93, seed=0):
    """(H, W, 3) IRRG and (H, W) NDSM, uint8, of sizes that are not multiples of 16."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), rng.integers(0, 256, (height, width), dtype=np.uint8)


def write_pair(root, rgir, ndsm, name="area"):
    """root/rgir/<name>.tif, a 4-band R, G, B, IR GeoTIFF as Potsdam's, and root/ndsm/<name>.tif, 8-bit."""
    (root / "rgir").mkdir(parents=True, exist_ok=True)
    (root / "ndsm").mkdir(parents=True, exist_ok=True)
    infrared, red, green = np.moveaxis(rgir, -1, 0)
    rgbir = np.stack([red, green, np.full_like(red, 90), infrared], axis=-1)
    tifffile.imwrite(root / "rgir" / f"{name}.tif", rgbir, photometric="rgb", extrasamples=[0], extratags=GEOREFERENCE)
    tifffile.imwrite(root / "ndsm" / f"{name}.tif", ndsm, extratags=GEOREFERENCE)
    return root / "rgir" / f"{name}.tif", root / "ndsm" / f"{name}.tif"


def read(path):
    """Pixels and GeoTIFF tags of a prediction."""
    with tifffile.TiffFile(path) as tiff:
        tags = {tag.code: tag.value for tag in tiff.pages.first.tags if tag.code in raster.GEOTIFF_TAGS}
        return tiff.asarray(), tags


def files(folder):
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ outputs


def test_outputs_carry_the_input_georeferencing(checkpoint, tmp_path):
    rgir, ndsm = scene()
    ortho, height = write_pair(tmp_path, rgir, ndsm)
    metres = tmp_path / "metres.tif"  # a float NDSM in metres, with the same georeferencing
    tifffile.imwrite(metres, ndsm.astype(np.float32) / data.NDSM_LEVELS_PER_METRE, extratags=GEOREFERENCE)
    out = tmp_path / "out"
    predict("--out", out, "--rgir", ortho, "--ndsm", metres, "--checkpoint", checkpoint,
            "--probabilities", "--attention")
    assert files(out) == ["area_attention.tif", "area_labels.tif", "area_probabilities.tif"]
    expected = read(ortho)[1]
    assert set(expected) == {33550, 33922, 34735, 34736, 34737}
    labels, tags = read(out / "area_labels.tif")
    assert tags == expected and labels.shape == ndsm.shape and labels.dtype == np.uint8 and labels.max() < 6
    probabilities, tags = read(out / "area_probabilities.tif")
    assert tags == expected and probabilities.shape == (*ndsm.shape, 6) and probabilities.dtype == np.uint8
    assert np.abs(probabilities.sum(-1, dtype=int) - 255).max() <= 3  # rounded means of the softmax
    confident = probabilities.max(-1) > 130  # above one half: the class of the label, whatever the rounding
    np.testing.assert_array_equal(probabilities.argmax(-1)[confident], labels[confident])
    attention, tags = read(out / "area_attention.tif")
    assert tags == expected and attention.shape == (*ndsm.shape, 6) and attention.dtype == np.float32
    assert (attention > 0).all() and 0.5 < attention.mean() < 1.5  # h*w alpha_k: 1 is uniform attention


@pytest.mark.parametrize("scenario", ["full", "missing_rgir", "missing_ndsm"])
def test_prediction_equals_the_evaluation_path_and_ignores_the_absent_modality(checkpoint, model, tmp_path, scenario):
    rgir, ndsm = scene()
    ortho, height = write_pair(tmp_path, rgir, ndsm)
    inputs = {"full": ["--rgir", ortho, "--ndsm", height], "missing_rgir": ["--ndsm", height],
              "missing_ndsm": ["--rgir", ortho]}
    predict("--out", tmp_path / "out", *inputs[scenario], "--checkpoint", checkpoint)
    labels = read(tmp_path / "out" / "area_labels.tif")[0]
    # predict_tile is given both modalities; the file prediction never saw the absent one
    tile = data.Tile("area", rgir, ndsm, np.zeros(ndsm.shape, np.uint8), None)
    expected = evaluate.predict_tile(model, tile, [scenario], PATCH, PATCH // 4, 3, CPU, None)[scenario]
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1


def test_colour_output_is_the_palette_of_the_class_ids(checkpoint, tmp_path):
    ortho, height = write_pair(tmp_path, *scene())
    predict("--out", tmp_path / "ids", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint)
    predict("--out", tmp_path / "colours", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint, "--colour")
    colours, tags = read(tmp_path / "colours" / "area_labels.tif")
    np.testing.assert_array_equal(colours, data.labels_to_rgb(read(tmp_path / "ids" / "area_labels.tif")[0]))
    assert tags == read(ortho)[1]


def test_model_transformation_is_copied_onto_the_outputs(checkpoint, tmp_path):
    rgir, _ = scene()
    # a rotated grid, which GeoTIFF gives by ModelTransformation (34264) instead of a scale and a tiepoint
    matrix = (0.09, 0.01, 0.0, 497000.0, 0.01, -0.09, 0.0, 5420000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    tifffile.imwrite(tmp_path / "area.tif", rgir, photometric="rgb",
                     extratags=[(34264, "d", 16, matrix, True), GEOREFERENCE[2]])
    predict("--out", tmp_path / "out", "--rgir", tmp_path / "area.tif", "--checkpoint", checkpoint, "--scenario-map")
    for output in ("area_labels.tif", "area_scenario.tif"):
        with tifffile.TiffFile(tmp_path / "out" / output) as tiff:
            assert tiff.pages.first.tags.valueof(34264) == matrix, output


def test_the_orthophoto_georeferencing_is_written_over_the_ndsm_one(checkpoint, tmp_path):
    rgir, ndsm = scene()
    ortho, _ = write_pair(tmp_path, rgir, ndsm)
    shifted = [GEOREFERENCE[0], (33922, "d", 6, (0.0, 0.0, 0.0, 498000.0, 5421000.0, 0.0), True), *GEOREFERENCE[2:]]
    tifffile.imwrite(tmp_path / "shifted.tif", ndsm, extratags=shifted)
    predict("--out", tmp_path / "both", "--rgir", ortho, "--ndsm", tmp_path / "shifted.tif", "--checkpoint", checkpoint)
    assert read(tmp_path / "both" / "area_labels.tif")[1] == read(ortho)[1] != read(tmp_path / "shifted.tif")[1]
    Image.fromarray(rgir).save(tmp_path / "area.png")  # an orthophoto without georeferencing: the NDSM's
    predict("--out", tmp_path / "png", "--rgir", tmp_path / "area.png", "--ndsm", tmp_path / "shifted.tif",
            "--checkpoint", checkpoint)
    assert read(tmp_path / "png" / "area_labels.tif")[1] == read(tmp_path / "shifted.tif")[1]


def test_png_inputs_give_the_same_map_without_georeferencing(checkpoint, tmp_path):
    rgir, ndsm = scene()
    ortho, height = write_pair(tmp_path, rgir, ndsm)
    Image.fromarray(rgir).save(tmp_path / "area.png")  # 3 bands: IRRG
    Image.fromarray(ndsm).save(tmp_path / "area_ndsm.png")
    predict("--out", tmp_path / "tif", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint)
    predict("--out", tmp_path / "png", "--rgir", tmp_path / "area.png", "--ndsm", tmp_path / "area_ndsm.png",
            "--checkpoint", checkpoint)
    labels, tags = read(tmp_path / "png" / "area_labels.tif")
    np.testing.assert_array_equal(labels, read(tmp_path / "tif" / "area_labels.tif")[0])
    assert tags == {}


def test_folders_give_one_output_per_image(checkpoint, tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 1)):
        write_pair(tmp_path, *scene(seed=seed), name=name)
    tifffile.imwrite(tmp_path / "ndsm" / "c.tif", scene()[1])  # an NDSM without an orthophoto: not used
    predict("--out", tmp_path / "both", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
            "--checkpoint", checkpoint)
    assert "notice: 1 NDSM file(s)" in capsys.readouterr().out
    assert files(tmp_path / "both") == ["a_labels.tif", "b_labels.tif", "labels.vrt"]  # and their mosaic
    predict("--out", tmp_path / "rgir_only", "--rgir", tmp_path / "rgir", "--checkpoint", checkpoint)
    assert files(tmp_path / "rgir_only") == ["a_labels.tif", "b_labels.tif", "labels.vrt"]


def test_each_area_is_read_once_and_every_file_written_is_named(checkpoint, tmp_path, capsys, monkeypatch):
    for name, seed in (("a", 0), ("b", 1)):
        write_pair(tmp_path, *scene(seed=seed), name=name)
    reads, read = [], raster._read_raster
    monkeypatch.setattr(raster, "_read_raster", lambda path: (reads.append(path.name), read(path))[1])
    predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
            "--checkpoint", checkpoint, "--probabilities")
    assert sorted(reads) == ["a.tif", "a.tif", "b.tif", "b.tif"]  # each orthophoto and NDSM once
    named = {Path(path).name for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")
             for path in line.removeprefix("wrote ").split(", ") if path.endswith((".tif", ".vrt"))}
    assert named == set(files(tmp_path / "out"))


def test_an_area_out_of_memory_fails_alone_with_the_hint_to_lower_the_batch_size(checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    for name, seed in (("a", 0), ("b", 1)):
        write_pair(tmp_path, *scene(seed=seed), name=name)
    strips = predict_py.predict_strips

    def out_of_memory_in_a(settings, rgir, *args):
        if (rgir == scene(seed=0)[0]).all():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return strips(settings, rgir, *args)

    monkeypatch.setattr(predict_py, "predict_strips", out_of_memory_in_a)
    with pytest.raises(SystemExit) as stop:
        predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
                "--checkpoint", checkpoint)
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert stop.value.code == 2 and line == ("error: a: out of memory with --batch-size 3; lower --batch-size "
                                             "(or --patch) for this area")
    assert files(tmp_path / "out") == ["b_labels.tif", "labels.vrt"]
    assert "2 area(s): 1 predicted, 0 skipped (outputs complete), 1 failed: a (" in printed.out


def test_strips_give_the_whole_image_result(model):
    rgir, ndsm = scene(height=150, width=70)

    def run(batch_size):
        settings = predict_py.Settings(model, PATCH, PATCH // 4, batch_size, CPU, probabilities=True, attention=True)
        strips = list(predict_py.predict_strips(settings, rgir, ndsm))
        return len(strips), {key: np.concatenate([strip[key] for strip in strips]) for key in strips[0]}

    count, streamed = run(batch_size=2)
    one, whole = run(batch_size=len(data.sliding_windows(150, 70, PATCH, PATCH // 4)))  # one batch: every row held
    assert count > 5 and one == 1
    np.testing.assert_array_equal(streamed["labels"], whole["labels"])
    for key in ("probabilities", "attention"):
        assert streamed[key].shape == (150, 70, 6)
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(streamed["probabilities"].sum(-1), 1, atol=1e-5)


MEMORY_SCRIPT = """
import resource, sys, types, torch, data, predict
from dis2 import DIS2Config

class PerPixel(torch.nn.Module):
    config = DIS2Config()

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, self.config.num_classes, 1)

    def forward(self, rgir, ndsm):
        return types.SimpleNamespace(logits=self.mix(rgir), attention=None)

def label(image):
    data.exit_on_user_error(lambda: predict.main(["--out", out, "--rgir", image, *argv]))

predict.model_from_checkpoint = lambda *args: PerPixel().eval()
out, small, large, *argv = sys.argv[1:]
label(small)  # the allocator's and torch's one-time costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
label(large)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_memory_stays_bounded_on_a_large_image(checkpoint, tmp_path):
    """Peak memory of predicting a large image after a small one of the same width. The network
    is a per-pixel stand-in (a network's memory is per window, whatever the image's size);
    reading, stitching and writing are the real ones."""
    width = 1500
    for name, height in (("small", 300), ("large", 4000)):
        ramp = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3))
        tifffile.imwrite(tmp_path / f"{name}.tif", ramp, photometric="rgb")
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, tmp_path / "out", tmp_path / "small.tif", tmp_path / "large.tif",
         "--checkpoint", checkpoint, "--patch", "256", "--probabilities"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    growth_mb = int(result.stdout.strip().splitlines()[-1])
    # The large image is 18 MB; its K x H x W float32 probabilities would take 144 MB.
    assert growth_mb < 100, f"peak memory grew by {growth_mb} MB"
    assert read(tmp_path / "out" / "large_labels.tif")[0].shape == (4000, width)


# ---------------------------------------------------------------- bad input


def test_both_modalities_missing_stops_the_command_line(checkpoint, tmp_path):
    result = subprocess.run([sys.executable, "predict.py", "--out", tmp_path / "out", "--checkpoint", checkpoint],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--rgir" in result.stderr
    assert not (tmp_path / "out").exists()


def test_inputs_without_an_output_folder(checkpoint, tmp_path, capsys):
    ortho, _ = write_pair(tmp_path, *scene())
    assert "--out" in refused(capsys, "--rgir", ortho, "--checkpoint", checkpoint)


@pytest.mark.parametrize("cut, size", [("a row", "74 x 93"), ("a column", "75 x 92")])
def test_modalities_of_different_sizes(checkpoint, tmp_path, capsys, cut, size):
    rgir, ndsm = scene()
    ortho, height = write_pair(tmp_path, rgir, ndsm[:-1] if cut == "a row" else ndsm[:, :-1])
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint)
    assert f"size {size} differs from {ortho} (75 x 93)" in line
    assert not (tmp_path / "out").exists()


def test_orthophoto_with_a_wrong_band_count(checkpoint, tmp_path, capsys):
    two_bands = tmp_path / "two.tif"
    tifffile.imwrite(two_bands, scene()[0][..., :2], planarconfig="contig")
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", two_bands, "--checkpoint", checkpoint)
    assert "two.tif" in line and "3-band or 4-band" in line
    assert not (tmp_path / "out").exists()


def test_truncated_input(checkpoint, tmp_path, capsys):
    ortho, height = write_pair(tmp_path, *scene())
    height.write_bytes(height.read_bytes()[:2000])
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint)
    assert "cannot be read" in line
    assert not (tmp_path / "out").exists()


def test_a_bad_area_in_a_folder_is_said_and_the_others_are_predicted(checkpoint, tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_pair(tmp_path, *scene(seed=seed), name=name)
    (tmp_path / "ndsm" / "b.tif").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as stop:
        predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
                "--checkpoint", checkpoint)
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert stop.value.code == 2 and line.startswith("error: ") and "b.tif" in line
    assert files(tmp_path / "out") == ["a_labels.tif", "c_labels.tif", "labels.vrt"]
    assert printed.out.strip().splitlines()[-1] == (f"3 area(s): 2 predicted, 0 skipped (outputs complete), 1 failed: "
                                                     f"b ({line.removeprefix('error: ')})")


def test_an_area_whose_modalities_differ_in_size_fails_alone_and_is_counted_as_failed(checkpoint, tmp_path, capsys):
    write_pair(tmp_path, *scene(seed=0), name="a")
    rgir, ndsm = scene(seed=1)
    write_pair(tmp_path, rgir, ndsm[:-1], name="b")
    with pytest.raises(SystemExit) as stop:
        predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
                "--checkpoint", checkpoint)
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert stop.value.code == 2 and "b.tif: size 74 x 93 differs from" in line
    assert printed.out.strip().splitlines()[-1] == (f"2 area(s): 1 predicted, 0 skipped (outputs complete), 1 failed: "
                                                     f"b ({line.removeprefix('error: ')})")
    assert files(tmp_path / "out") == ["a_labels.tif", "labels.vrt"]


def test_a_failed_write_in_a_folder_fails_that_area_only(checkpoint, tmp_path, capsys, monkeypatch):
    for name, seed in (("a", 0), ("b", 1)):
        write_pair(tmp_path, *scene(seed=seed), name=name)
    commit = geotiff.StripWriter.commit

    def disk_full_for_a(writer):
        if writer.path.name.startswith("a_"):
            raise OSError(28, "No space left on device")
        commit(writer)

    monkeypatch.setattr(geotiff.StripWriter, "commit", disk_full_for_a)
    with pytest.raises(SystemExit) as stop:
        predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
                "--checkpoint", checkpoint)
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert stop.value.code == 2 and "cannot write the prediction of a" in line and "No space left" in line
    assert files(tmp_path / "out") == ["b_labels.tif", "labels.vrt"]  # a's temporaries removed, a not in the mosaic
    assert "2 area(s): 1 predicted, 0 skipped (outputs complete), 1 failed: a (" in printed.out


def test_orthophoto_without_a_matching_ndsm(checkpoint, tmp_path, capsys):
    write_pair(tmp_path, *scene(), name="a")
    write_pair(tmp_path, *scene(), name="b")
    (tmp_path / "ndsm" / "b.tif").unlink()
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm", tmp_path / "ndsm",
                   "--checkpoint", checkpoint)
    assert "b.tif" in line and "no NDSM of the same name" in line


def test_checkpoint_of_another_class_count(tmp_path, capsys):
    ortho, _ = write_pair(tmp_path, *scene())
    five = tiny_checkpoint(tmp_path / "five.pt", num_classes=5)
    assert "5 classes" in refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--checkpoint", five)


def test_attention_of_a_model_without_classwise_attention(tmp_path, capsys):
    ortho, _ = write_pair(tmp_path, *scene())
    hf = tiny_checkpoint(tmp_path / "hf.pt", classwise=False, dlkd=False)
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--checkpoint", hf, "--attention")
    assert "no classwise attention" in line


def test_output_folder_that_is_not_writable(checkpoint, tmp_path, capsys):
    ortho, _ = write_pair(tmp_path, *scene())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "cannot write" in refused(capsys, "--out", blocker / "out", "--rgir", ortho, "--checkpoint", checkpoint)


def test_a_failed_write_leaves_no_partial_output(checkpoint, tmp_path, capsys, monkeypatch):
    ortho, height = write_pair(tmp_path, *scene(height=150))
    written = []

    def disk_full_on_the_third_strip(writer, rows):
        written.append(rows)
        if len(written) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(geotiff.StripWriter, "write", disk_full_on_the_third_strip)
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint,
                   "--probabilities")
    assert "No space left on device" in line
    assert files(tmp_path / "out") == []  # neither outputs nor their temporary files


def test_a_failed_set_up_of_an_output_leaves_no_partial_file(checkpoint, tmp_path, capsys, monkeypatch):
    ortho, height = write_pair(tmp_path, *scene())
    opened = []

    def too_many_open_files_at_the_second(path, mode):
        opened.append(path)
        if len(opened) == 2:  # the probabilities' temporary exists, its writer is not made yet
            raise OSError(24, "Too many open files")
        return open(path, mode)

    monkeypatch.setattr(geotiff, "open", too_many_open_files_at_the_second, raising=False)
    line = refused(capsys, "--out", tmp_path / "out", "--rgir", ortho, "--ndsm", height, "--checkpoint", checkpoint,
                   "--probabilities")
    assert "Too many open files" in line and len(opened) == 2
    assert files(tmp_path / "out") == []  # neither outputs nor their temporary files
