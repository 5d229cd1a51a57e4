"""predict.py for a city: torchrun shares the areas out, reruns skip finished areas, outputs are tiled and
compressed with overviews, and a folder gets a VRT mosaic of each output."""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import geotiff
import predict as predict_py
import raster
import runtime
from test_distributed import torchrun
from test_predict import CPU, GEOREFERENCE, PATCH, ROOT, files, predict, scene, tiny_checkpoint

HEIGHT, WIDTH = 75, 93


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")


def georeferenced(x, y, epsg=32632, pixel=0.09, point=False):
    """GEOREFERENCE with the top-left corner at (x, y) metres, in UTM zone 32N (or another EPSG code, 32767:
    user-defined), pixels of `pixel` metres; `point`: PixelIsPoint, (x, y) the top-left pixel's centre."""
    tags = dict((tag[0], tag) for tag in GEOREFERENCE)
    keys = list(tags[34735][3])
    keys[-1] = epsg  # ProjectedCSTypeGeoKey, the directory's last key
    keys[11] = 2 if point else 1  # GTRasterTypeGeoKey: 1 PixelIsArea, 2 PixelIsPoint
    tags[33550] = (33550, "d", 3, (pixel, pixel, 0.0), True)
    tags[33922] = (33922, "d", 6, (0.0, 0.0, 0.0, x, y, 0.0), True)
    tags[34735] = (34735, "H", 16, tuple(keys), True)
    return list(tags.values())


def runtime_model(checkpoint):
    return runtime.model_from_checkpoint(runtime.load_checkpoint(checkpoint), CPU)


def write_area(root, name, seed, x=497000.0, y=5420000.0, epsg=32632, tags=None, collar=0):
    """root/rgir/<name>.tif (IRRG) and root/ndsm/<name>.tif with their top-left corner at (x, y) (or `tags`), their
    first `collar` columns without data in either (0 in the orthophoto, --rgir-nodata 0; NaN in the NDSM)."""
    rgir, ndsm = scene(HEIGHT, WIDTH, seed)
    if collar:
        rgir[:, :collar] = 0
        ndsm = np.where(np.arange(WIDTH) < collar, np.float32(np.nan), ndsm.astype(np.float32) / 10)
    for folder, image, photometric in (("rgir", rgir, "rgb"), ("ndsm", ndsm, "minisblack")):
        (root / folder).mkdir(exist_ok=True)
        tifffile.imwrite(root / folder / f"{name}.tif", image, photometric=photometric,
                         extratags=georeferenced(x, y, epsg) if tags is None else tags)


def folder(root, out, checkpoint, *flags):
    predict("--out", out, "--rgir", root / "rgir", "--ndsm", root / "ndsm", "--checkpoint", checkpoint, *flags)


# ------------------------------------------------------------------ torchrun


def test_two_processes_write_the_areas_of_one(checkpoint, tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_area(tmp_path, name, seed, x=497000.0 + 0.09 * WIDTH * seed)
    folder(tmp_path, tmp_path / "one", checkpoint, "--probabilities")
    result = torchrun("predict.py", "--out", tmp_path / "two", "--rgir", tmp_path / "rgir", "--ndsm",
                      tmp_path / "ndsm", "--checkpoint", checkpoint, "--probabilities", "--batch-size", "3",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    # the three areas claimed by the processes as they go, each written once
    assert len(written_per_process(result.stdout)) == 2 and sum(written_per_process(result.stdout).values()) == 3
    assert "3 area(s): 3 predicted, 0 skipped" in result.stdout
    assert files(tmp_path / "two") == files(tmp_path / "one")
    for name in files(tmp_path / "one"):
        if name.endswith(".tif"):
            two, one = (tifffile.imread(tmp_path / run / name) for run in ("two", "one"))
            np.testing.assert_array_equal(two, one)
        else:  # the mosaics
            assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def written_per_process(printed):
    """{process: the areas it says it predicted}, from its "wrote the predictions of N image(s) ... (process R of W)"."""
    found = re.findall(r"wrote the predictions of (\d+) image\(s\) .*\(process (\d+) of", printed)
    return {int(rank): int(count) for count, rank in found}


SLOW_AREA = """
import sys, time
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
import data, predict, raster

start = dist.init_process_group  # collectives time out after 5 s instead of 30 minutes
dist.init_process_group = lambda *args, **kwargs: start(*args, **{**kwargs, "timeout": timedelta(seconds=5)})
read = raster.read_orthophoto


def slowly(path, *args, **kwargs):  # the area "slow" takes 15 s more than the others to read
    if Path(path).stem == "slow":
        time.sleep(15)
    return read(path, *args, **kwargs)


raster.read_orthophoto = slowly
data.exit_on_user_error(lambda: predict.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_torchrun_finishes_a_city_whose_areas_take_far_longer_than_the_collective_timeout(checkpoint, tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 2), ("slow", 3)):  # more areas than processes, one slow
        write_area(tmp_path, name, seed, x=497000.0 + 0.09 * WIDTH * seed)
    (tmp_path / "slow_area.py").write_text(SLOW_AREA)
    result = torchrun(tmp_path / "slow_area.py", "--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm",
                      tmp_path / "ndsm", "--checkpoint", checkpoint, "--batch-size", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 area(s): 4 predicted, 0 skipped (outputs complete), 0 failed" in result.stdout
    assert len(written_per_process(result.stdout)) == 2 and sum(written_per_process(result.stdout).values()) == 4
    assert files(tmp_path / "out") == ["a_labels.tif", "b_labels.tif", "c_labels.tif", "labels.vrt", "slow_labels.tif"]


def test_under_torchrun_a_bad_area_is_said_by_its_process_and_summed_up_by_the_first(checkpoint, tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_area(tmp_path, name, seed, x=497000.0 + 0.09 * WIDTH * seed)
    (tmp_path / "rgir" / "b.tif").write_bytes(b"not an image")  # b goes to process 1
    result = torchrun("predict.py", "--out", tmp_path / "out", "--rgir", tmp_path / "rgir", "--ndsm",
                      tmp_path / "ndsm", "--checkpoint", checkpoint, "--batch-size", "3", "--device", "cpu")
    # exit status 2 in both processes, so torchrun fails (its own report and traceback follow on stderr)
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{tmp_path / 'rgir' / 'b.tif'}: cannot be read" in line
    assert "3 area(s): 2 predicted, 0 skipped (outputs complete), 1 failed: b (" in result.stdout
    assert files(tmp_path / "out") == ["a_labels.tif", "c_labels.tif", "labels.vrt"]


# ------------------------------------------------------------------ reruns


def test_a_rerun_predicts_only_the_areas_without_complete_outputs(checkpoint, tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 1)):
        write_area(tmp_path, name, seed)
    out = tmp_path / "out"
    folder(tmp_path, out, checkpoint, "--probabilities")
    labels = tifffile.imread(out / "b_labels.tif")
    # as a run killed while writing b leaves it: b's labels renamed, not yet its probabilities, and a temporary
    (out / "b_probabilities.tif").unlink()
    (out / ".b_probabilities.tif.0.partial").write_bytes(b"half")
    first = (out / "a_labels.tif").stat().st_mtime_ns
    capsys.readouterr()
    folder(tmp_path, out, checkpoint, "--probabilities")
    printed = capsys.readouterr().out
    assert "1 of 2 area(s) skipped" in printed and "wrote the predictions of 1 image(s)" in printed
    assert (out / "a_labels.tif").stat().st_mtime_ns == first
    assert files(out) == ["a_labels.tif", "a_probabilities.tif", "b_labels.tif", "b_probabilities.tif",
                          "labels.vrt", "probabilities.vrt"]  # the temporary overwritten and removed
    np.testing.assert_array_equal(tifffile.imread(out / "b_labels.tif"), labels)
    folder(tmp_path, out, checkpoint)  # fewer outputs asked for: complete
    assert "2 of 2 area(s) skipped" in capsys.readouterr().out
    folder(tmp_path, out, checkpoint, "--overwrite")
    assert "wrote the predictions of 2 image(s)" in capsys.readouterr().out
    assert (out / "a_labels.tif").stat().st_mtime_ns != first


def single(tmp_path, out, checkpoint, *flags, ndsm=True):
    """predict.py on area a of tmp_path, its NDSM given or not; the labels written, and what it printed."""
    inputs = ["--rgir", tmp_path / "rgir" / "a.tif"] + (["--ndsm", tmp_path / "ndsm" / "a.tif"] if ndsm else [])
    predict("--out", out, *inputs, "--checkpoint", checkpoint, *flags)
    return tifffile.imread(out / "a_labels.tif")


def another_checkpoint(checkpoint, path):
    """The tiny checkpoint with other batch-norm statistics in its decoder: other labels."""
    state = torch.load(checkpoint)
    for name, value in state["model"].items():
        if "running_mean" in name:
            value.add_(0.7)
    torch.save(state, path)
    return path


def test_a_rerun_predicts_again_the_areas_made_with_another_checkpoint_inputs_or_flags(checkpoint, tmp_path, capsys):
    write_area(tmp_path, "a", 0)
    other = another_checkpoint(checkpoint, tmp_path / "other.pt")
    out = tmp_path / "out"
    single(tmp_path, out, checkpoint, ndsm=False)  # the README's lines: the orthophoto alone, then with the NDSM
    for flags, ndsm, why in (((), True, "other inputs"), (("--colour",), True, "other flags"), ((), True, "other flags"),
                             ((), True, None), (("--checkpoint", other), True, "another checkpoint")):
        capsys.readouterr()
        labels = single(tmp_path, out, checkpoint, *flags, ndsm=ndsm) if "--checkpoint" not in flags else \
            single(tmp_path, out, other, *flags[2:], ndsm=ndsm)
        printed = capsys.readouterr().out
        if why is None:  # made as asked: skipped
            assert "1 of 1 area(s) skipped" in printed and "0 predicted" in printed
        else:
            assert f"notice: 1 area(s) predicted again, their outputs in {out} made by {why}: a" in printed, printed
        fresh = single(tmp_path, tmp_path / "fresh", *([other] if "--checkpoint" in flags else [checkpoint]),
                       *[flag for flag in flags if flag == "--colour"], ndsm=ndsm) if why else labels
        np.testing.assert_array_equal(labels, fresh)
        shutil.rmtree(tmp_path / "fresh", ignore_errors=True)
    record = geotiff.provenance(out / "a_labels.tif")
    assert record["inputs"]["rgir"]["path"] == str((tmp_path / "rgir" / "a.tif").resolve()) and record["colour"] is False


def test_an_interrupted_overwrite_leaves_no_old_output_for_the_rerun_to_keep(checkpoint, tmp_path, capsys, monkeypatch):
    for name, seed in (("a", 0), ("b", 1)):
        write_area(tmp_path, name, seed)
    out, other = tmp_path / "out", another_checkpoint(checkpoint, tmp_path / "other.pt")
    folder(tmp_path, out, checkpoint, "--probabilities")
    strips = predict_py.predict_strips

    def cut_off_at_b(settings, rgir, *args):  # Ctrl-C while b is predicted
        if rgir is not None and (rgir == scene(HEIGHT, WIDTH, 1)[0]).all():
            raise KeyboardInterrupt
        return strips(settings, rgir, *args)

    monkeypatch.setattr(predict_py, "predict_strips", cut_off_at_b)
    with pytest.raises(KeyboardInterrupt):
        folder(tmp_path, out, other, "--probabilities", "--overwrite")
    assert not (out / "b_labels.tif").exists() and not (out / "b_probabilities.tif").exists()
    monkeypatch.setattr(predict_py, "predict_strips", strips)
    capsys.readouterr()
    folder(tmp_path, out, other, "--probabilities")  # the rerun, without --overwrite
    assert "2 area(s): 1 predicted, 1 skipped" in capsys.readouterr().out
    folder(tmp_path, tmp_path / "fresh", other, "--probabilities")
    for name in ("a_labels.tif", "b_labels.tif", "a_probabilities.tif", "b_probabilities.tif"):
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(tmp_path / "fresh" / name))


def test_each_output_is_on_disk_before_its_name_and_its_name_after(checkpoint, tmp_path, monkeypatch):
    write_area(tmp_path, "a", 0)
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), replace(a, b))[1])
    folder(tmp_path, tmp_path / "out", checkpoint, "--probabilities")
    renamed = [event for event in events if event[0] == "replace" and not event[2].endswith(".result")]
    assert {Path(event[2]).name for event in renamed} == {"a_labels.tif", "a_probabilities.tif", "labels.vrt",
                                                          "probabilities.vrt"}
    for event in renamed:
        at = events.index(event)
        assert ("fsync", event[1]) in events[:at], event  # the file's bytes before its name
        assert ("fsync", str(tmp_path / "out")) in events[at + 1 :], event  # the name after


# ------------------------------------------------------------------ tiled, compressed, overviews


def test_halving_keeps_the_common_class_and_averages_probabilities():
    ids = np.array([[1, 2, 5], [2, 3, 5], [4, 4, 4]], np.uint8)[..., None]
    np.testing.assert_array_equal(geotiff.halved(ids, "mode")[..., 0], [[2, 5], [4, 4]])
    tie = np.array([[1, 2], [3, 4]], np.uint8)[..., None]
    assert geotiff.halved(tie, "mode")[0, 0, 0] == 1  # no value shared: the top-left one
    colours = np.array([[[9, 0, 0], [0, 9, 0]], [[0, 9, 0], [9, 0, 0]]], np.uint8)  # a pixel's bands go together
    np.testing.assert_array_equal(geotiff.halved(colours, "mode"), [[[9, 0, 0]]])
    np.testing.assert_array_equal(geotiff.halved(ids, "mean")[..., 0], [[2, 5], [4, 4]])
    halves = np.array([[0, 1]], np.uint8)[..., None]
    assert geotiff.halved(halves, "mean")[0, 0, 0] == 1  # 0.5 rounded half up
    floats = np.arange(6, dtype=np.float32).reshape(2, 3, 1)  # the odd last column pairs with itself: 2, 5
    np.testing.assert_allclose(geotiff.halved(floats, "mean")[..., 0], [[2, 3.5]])


def test_outputs_are_tiled_compressed_with_overviews_and_read_back(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(geotiff, "TILE", 16)  # overviews for a small image
    write_area(tmp_path, "a", 0)
    predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir" / "a.tif", "--ndsm", tmp_path / "ndsm" / "a.tif",
            "--checkpoint", checkpoint, "--probabilities", "--attention", "--scenario-map")
    settings = predict_py.Settings(runtime_model(checkpoint), PATCH, PATCH // 4, 3, CPU, probabilities=True,
                                   attention=True)
    strips = list(predict_py.predict_strips(settings, *scene(HEIGHT, WIDTH, 0)))
    expected = {key: np.concatenate([strip[key] for strip in strips]) for key in strips[0]}
    expected["probabilities"] = np.rint(255 * expected["probabilities"]).astype(np.uint8)
    for kind in ("labels", "probabilities", "attention", "scenario"):
        path = tmp_path / "out" / f"a_{kind}.tif"
        with tifffile.TiffFile(path) as tiff:
            pages = list(tiff.pages)
            assert [page.shape[:2] for page in pages] == [(75, 93), (38, 47), (19, 24), (10, 12)], kind
            assert all(page.is_tiled and page.tilewidth == 16 and page.compression == 8 for page in pages)
            assert [page.subfiletype for page in pages] == [0, 1, 1, 1]  # overviews: reduced-resolution images
            assert {tag.code for tag in pages[0].tags} >= set(raster.GEOTIFF_TAGS) - {34264}
            full, overview = pages[0].asarray(), pages[1].asarray()
        pixels = raster.read_bands(path)[0]  # the project's own reader
        np.testing.assert_array_equal(pixels.reshape(full.shape), full)
        if kind == "attention":
            np.testing.assert_allclose(full, expected[kind], rtol=1e-6)
        else:
            np.testing.assert_array_equal(full, expected[kind])
        reduce = "mean" if kind in ("probabilities", "attention") else "mode"
        halves = geotiff.halved(full if full.ndim == 3 else full[..., None], reduce)
        np.testing.assert_array_equal(overview, halves.reshape(overview.shape))
    with tifffile.TiffFile(tmp_path / "out" / "a_labels.tif") as tiff:
        assert all(page.colormap is not None for page in tiff.pages)
    for kind, nodata in (("labels", "255"), ("scenario", "255"), ("probabilities", None), ("attention", None)):
        with tifffile.TiffFile(tmp_path / "out" / f"a_{kind}.tif") as tiff:  # on every level, as GDAL's overviews
            assert [page.tags.valueof(raster.GDAL_NODATA) for page in tiff.pages] == [nodata] * 4, kind
            assert all(code not in page.tags for page in tiff.pages[1:] for code in raster.GEOTIFF_TAGS), kind


# ------------------------------------------------------------------ the mosaic


def test_a_folder_gets_a_mosaic_that_leaves_out_another_coordinate_system(checkpoint, tmp_path, capsys):
    write_area(tmp_path, "west", 0)
    write_area(tmp_path, "east", 1, x=497000.0 + 0.09 * WIDTH)
    write_area(tmp_path, "south", 2, y=5420000.0 - 0.09 * HEIGHT)
    write_area(tmp_path, "elsewhere", 3, epsg=25832)
    folder(tmp_path, tmp_path / "out", checkpoint, "--colour")
    assert "leave out elsewhere (coordinate system EPSG:25832, the mosaic's is EPSG:32632)" in capsys.readouterr().out
    mosaic = ET.parse(tmp_path / "out" / "labels.vrt").getroot()
    assert (mosaic.get("rasterXSize"), mosaic.get("rasterYSize")) == (str(2 * WIDTH), str(2 * HEIGHT))
    assert mosaic.find("SRS").text == "EPSG:32632"
    assert [float(v) for v in mosaic.find("GeoTransform").text.split(",")] == [497000.0, 0.09, 0, 5420000.0, 0, -0.09]
    bands = mosaic.findall("VRTRasterBand")
    assert [band.find("ColorInterp").text for band in bands] == ["Red", "Green", "Blue"]
    placed = {source.find("SourceFilename").text: tuple(float(source.find("DstRect").get(k)) for k in ("xOff", "yOff"))
              for source in bands[0].findall("SimpleSource")}
    assert placed == {"east_labels.tif": (WIDTH, 0), "south_labels.tif": (0, HEIGHT), "west_labels.tif": (0, 0)}
    if shutil.which("gdalinfo"):  # GDAL reads the mosaic and the files it names
        info = subprocess.run(["gdalinfo", "-checksum", tmp_path / "out" / "labels.vrt"], capture_output=True,
                              text=True, check=True).stdout
        assert f"Size is {2 * WIDTH}, {2 * HEIGHT}" in info and "Checksum=" in info and "ERROR" not in info


def rendered(vrt):
    """(height, width, bands) a mosaic as GDAL composes it from its VRT: each band starts as its NoDataValue (0
    without one), and each source's SrcRect of its file goes to its DstRect, in order, its NODATA pixels leaving
    what lies below."""
    mosaic = ET.parse(vrt).getroot()
    bands = mosaic.findall("VRTRasterBand")
    canvas = np.zeros((int(mosaic.get("rasterYSize")), int(mosaic.get("rasterXSize")), len(bands)))
    for b, band in enumerate(bands):
        canvas[..., b] = float(band.findtext("NoDataValue", "0"))
        for source in band.findall("SimpleSource") + band.findall("ComplexSource"):
            pixels = tifffile.imread(vrt.parent / source.findtext("SourceFilename"))
            pixels = (pixels if pixels.ndim == 3 else pixels[..., None])[..., int(source.findtext("SourceBand")) - 1]
            src, dst = ({key: round(float(rect.get(key))) for key in ("xOff", "yOff", "xSize", "ySize")}
                        for rect in (source.find("SrcRect"), source.find("DstRect")))
            part = pixels[src["yOff"] : src["yOff"] + src["ySize"], src["xOff"] : src["xOff"] + src["xSize"]]
            assert part.shape == (dst["ySize"], dst["xSize"]), "a source GDAL would resample"
            region = canvas[dst["yOff"] : dst["yOff"] + dst["ySize"], dst["xOff"] : dst["xOff"] + dst["xSize"], b]
            shown = part != float(source.findtext("NODATA", "nan"))
            region[shown] = part[shown]
    return canvas


def geotransform(vrt):
    return [float(value) for value in ET.parse(vrt).getroot().findtext("GeoTransform").split(",")]


def test_the_mosaic_shows_each_area_where_its_georeferencing_puts_it(checkpoint, tmp_path):
    # names that do not sort top-down: a is south of b, c east of b, overlapping it by 20 columns where c has no data
    corners = {"a": (497000.0, 5420000.0 - 0.09 * HEIGHT), "b": (497000.0, 5420000.0),
               "c": (497000.0 + 0.09 * (WIDTH - 20), 5420000.0)}
    for seed, (name, (x, y)) in enumerate(corners.items()):
        write_area(tmp_path, name, seed, x, y, collar=20 if name == "c" else 0)
    out = tmp_path / "out"
    folder(tmp_path, out, checkpoint, "--rgir-nodata", "0", "--scenario-map")
    left, top = 497000.0, 5420000.0
    for kind in ("labels", "scenario"):
        expected = np.full((2 * HEIGHT, 2 * WIDTH - 20), 255.0)  # nodata where no area is
        for name, (x, y) in corners.items():
            own = tifffile.imread(out / f"{name}_{kind}.tif")
            column, row = round((x - left) / 0.09), round((top - y) / 0.09)
            region = expected[row : row + HEIGHT, column : column + WIDTH]
            region[own != 255] = own[own != 255]  # an area's pixels without data leave its neighbour's
        assert (tifffile.imread(out / f"c_{kind}.tif")[:, :20] == 255).all()
        np.testing.assert_array_equal(rendered(out / f"{kind}.vrt")[..., 0], expected, err_msg=kind)
        np.testing.assert_allclose(geotransform(out / f"{kind}.vrt"), [left, 0.09, 0, top, 0, -0.09], rtol=0, atol=1e-6)


def test_a_pixel_is_point_area_is_placed_by_the_corner_of_its_top_left_pixel(checkpoint, tmp_path):
    # the tiepoint is the top-left pixel's centre, half a pixel in from its corner (as GDAL reads it): an absolute
    # tolerance, as a relative one at UTM coordinates (5e6 m) would pass half a pixel (4.5 cm)
    write_area(tmp_path, "a", 0, tags=georeferenced(497000.0, 5420000.0, point=True))
    folder(tmp_path, tmp_path / "out", checkpoint)
    np.testing.assert_allclose(geotransform(tmp_path / "out" / "labels.vrt"),
                               [497000.0 - 0.045, 0.09, 0, 5420000.0 + 0.045, 0, -0.09], rtol=0, atol=1e-6)


def test_a_mosaic_of_a_user_defined_system_says_it_has_none_and_leaves_out_a_rotated_area(checkpoint, tmp_path, capsys):
    write_area(tmp_path, "a", 0, epsg=32767)  # a coordinate system given by its parameters: no EPSG code
    # pixels a GIS wrote 1e-12 apart: one grid
    write_area(tmp_path, "b", 1, tags=georeferenced(497000.0 + 0.09 * WIDTH, 5420000.0, 32767, 0.09 * (1 + 1e-12)))
    rotated = (0.09, 0.01, 0.0, 497000.0, 0.01, -0.09, 0.0, 5420000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    write_area(tmp_path, "c", 2, tags=[(34264, "d", 16, rotated, True), georeferenced(0, 0, 32767)[2]])
    folder(tmp_path, tmp_path / "out", checkpoint)
    printed = capsys.readouterr().out
    assert "leave out c (no georeferencing, or a rotated grid)" in printed
    assert "have no coordinate system: their areas' is user-defined (GeoKey 32767" in printed
    mosaic = ET.parse(tmp_path / "out" / "labels.vrt").getroot()
    assert mosaic.find("SRS") is None and mosaic.get("rasterXSize") == str(2 * WIDTH)
    assert [source.findtext("SourceFilename") for source in mosaic.iter("ComplexSource")] == ["a_labels.tif",
                                                                                              "b_labels.tif"]


@pytest.mark.skipif(not shutil.which("gdalinfo"), reason="GDAL's gdalinfo is not installed")
def test_gdal_reads_the_outputs_with_their_overviews(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(geotiff, "TILE", 16)
    write_area(tmp_path, "a", 0)
    predict("--out", tmp_path / "out", "--rgir", tmp_path / "rgir" / "a.tif", "--checkpoint", checkpoint,
            "--probabilities")
    labels = subprocess.run(["gdalinfo", "-checksum", tmp_path / "out" / "a_labels.tif"], capture_output=True,
                            text=True, check=True).stdout
    for expected in ("Block=16x16", "COMPRESSION=DEFLATE", "ColorInterp=Palette", "NoData Value=255",
                     "Overviews: 47x38, 24x19, 12x10", "WGS 84 / UTM zone 32N"):
        assert expected in labels
    probabilities = subprocess.run(["gdalinfo", "-checksum", tmp_path / "out" / "a_probabilities.tif"],
                                   capture_output=True, text=True, check=True).stdout
    assert probabilities.count("Overviews checksum") == 6 and "ERROR" not in probabilities


# ------------------------------------------------------------------ --compile


def test_full_batches_feed_the_model_one_batch_size_and_change_no_label(checkpoint):
    model = runtime_model(checkpoint)
    seen = []

    class Recorded(torch.nn.Module):
        config = model.config

        def forward(self, rgir, ndsm):
            seen.append((rgir if rgir is not None else ndsm).shape[0])
            return model(rgir, ndsm)

    rgir, ndsm = scene(HEIGHT, WIDTH, 0)
    rgir_valid = np.ones((HEIGHT, WIDTH), bool)
    rgir_valid[:, :40] = False  # two scenarios, each on its share of some batches
    run = lambda m: np.concatenate([strip["labels"] for strip in predict_py.predict_strips(
        predict_py.Settings(m, PATCH, PATCH // 4, 4, CPU), rgir, ndsm, rgir_valid)])
    plain = run(Recorded())
    assert len(set(seen)) > 1  # batches of several sizes
    seen.clear()
    np.testing.assert_array_equal(run(runtime.FullBatches(Recorded(), 4)), plain)
    assert set(seen) == {4}
