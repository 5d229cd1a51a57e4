"""Missing where missing: files with holes (NaN, a declared or flagged nodata value, alpha 0, an
internal mask) are predicted per region in the scenario their data allows. A 128 x 128 area in four
quadrants: the orthophoto has a collar over the top half, the NDSM a hole over the left half, so
the quadrants are no data (top left), missing RGIR (top right), missing NDSM (bottom left) and full
(bottom right). Away from the quadrants' edges, the labels must be exactly those of whole-image
runs of each scenario (predict.main with a tiny checkpoint, as tests/test_predict.py's)."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import data
import predict as predict_py
import raster
import synth
from test_predict import PATCH, labels, refused_labels, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIZE, HALF = 128, 64
COLLAR = np.zeros((SIZE, SIZE), bool)
COLLAR[:HALF] = True  # the orthophoto has no data here
HOLE = np.zeros((SIZE, SIZE), bool)
HOLE[:, :HALF] = True  # the NDSM has no data here
CODES = predict_py.SCENARIO_CODES
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")


@pytest.fixture(scope="module")
def area():
    """(H, W, 3) IRRG and (H, W) NDSM, uint8, every pixel with data."""
    rng = np.random.default_rng(3)
    return rng.integers(1, 256, (SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


@pytest.fixture(scope="module")
def scenarios(checkpoint, area, tmp_path_factory):
    """Whole-image labels of each scenario from the files without holes."""
    root = tmp_path_factory.mktemp("whole")
    rgir, ndsm = area
    tifffile.imwrite(root / "rgir.tif", rgir, photometric="rgb")
    tifffile.imwrite(root / "ndsm.tif", ndsm)
    inputs = {"full": ["--rgir", root / "rgir.tif", "--ndsm", root / "ndsm.tif"],
              "missing_rgir": ["--ndsm", root / "ndsm.tif"], "missing_ndsm": ["--rgir", root / "rgir.tif"]}
    found = {scenario: labels(checkpoint, root / scenario, *flags) for scenario, flags in inputs.items()}
    assert all((found["full"] != other).any() for other in (found["missing_rgir"], found["missing_ndsm"]))
    return found


def expected_scenarios():
    """(H, W) the scenario code of each quadrant."""
    codes = np.full((SIZE, SIZE), predict_py.NO_SCENARIO, np.uint8)
    codes[~COLLAR & HOLE] = CODES["missing_ndsm"]
    codes[COLLAR & ~HOLE] = CODES["missing_rgir"]
    codes[~COLLAR & ~HOLE] = CODES["full"]
    return codes


def away_from_edges(codes):
    """(H, W) bool: the pixels that every window covering them sees in one scenario alone."""
    inside = np.ones(codes.shape, bool)
    for y, x in data.sliding_windows(*codes.shape, PATCH, PATCH // 4):
        window = codes[y : y + PATCH, x : x + PATCH]
        if (window != window[0, 0]).any():
            inside[y : y + PATCH, x : x + PATCH] = False
    return inside


def write_with_mask(path, image, mask, **options):
    """A TIFF with an internal transparency mask, as GDAL writes one (NewSubfileType 4, 1 bit)."""
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, **options)
        tiff.write(mask, photometric=4, subfiletype=4)


def holed_files(root, area, how):
    """The area's files with the collar and the hole, declared as `how` says; the flags they need."""
    rgir, ndsm = area
    metres = ndsm.astype(np.float32) / raster.NDSM_LEVELS_PER_METRE
    collared = np.where(COLLAR[..., None], 0, rgir).astype(np.uint8)
    nodata = lambda value: [(raster.GDAL_NODATA, "s", 0, value, True)]
    flags = []
    if how == "nan and declared":
        tifffile.imwrite(root / "rgir.tif", collared, photometric="rgb", extratags=nodata("0"))
        tifffile.imwrite(root / "ndsm.tif", np.where(HOLE, np.nan, metres))
    elif how == "declared and alpha":
        alpha = np.where(COLLAR, 0, 255).astype(np.uint8)[..., None]
        tifffile.imwrite(root / "rgir.tif", np.concatenate([rgir, alpha], -1), photometric="rgb", extrasamples=[2])
        tifffile.imwrite(root / "ndsm.tif", np.where(HOLE, -9999, metres).astype(np.float32),
                         extratags=nodata("-9999"))
    elif how == "flagged":
        tifffile.imwrite(root / "rgir.tif", collared, photometric="rgb")
        tifffile.imwrite(root / "ndsm.tif", np.where(HOLE, -9999, metres).astype(np.float32))
        flags = ["--rgir-nodata", 0, "--ndsm-nodata", -9999]
    elif how == "masks":
        write_with_mask(root / "rgir.tif", rgir, ~COLLAR, photometric="rgb", compression="zlib")
        write_with_mask(root / "ndsm.tif", ndsm, ~HOLE)
    return ["--rgir", root / "rgir.tif", "--ndsm", root / "ndsm.tif", *flags]


@pytest.mark.parametrize("how", ["nan and declared", "declared and alpha", "flagged", "masks"])
def test_each_region_gets_the_labels_of_the_scenario_its_data_allows(checkpoint, area, scenarios, tmp_path, how):
    found = labels(checkpoint, tmp_path / "out", *holed_files(tmp_path, area, how), "--scenario-map")
    codes = expected_scenarios()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "rgir_scenario.tif"), codes)
    assert (found[codes == predict_py.NO_SCENARIO] == predict_py.NODATA_LABEL).all()
    assert (found[codes != predict_py.NO_SCENARIO] < len(data.CLASSES)).all()  # at the edges too: a class
    inside = away_from_edges(codes)
    for scenario, code in CODES.items():
        region = inside & (codes == code)
        assert region.sum() > 1000, scenario
        np.testing.assert_array_equal(found[region], scenarios[scenario][region], err_msg=scenario)


@pytest.mark.parametrize("given", ["--rgir", "--ndsm"])
def test_a_single_modality_with_holes_gets_the_scenario_its_data_allows(checkpoint, area, scenarios, tmp_path, given):
    inputs = holed_files(tmp_path, area, "nan and declared")
    path = inputs[inputs.index(given) + 1]
    found = labels(checkpoint, tmp_path / "out", given, path, "--scenario-map")
    hole, scenario = (COLLAR, "missing_ndsm") if given == "--rgir" else (HOLE, "missing_rgir")
    codes = np.where(hole, predict_py.NO_SCENARIO, CODES[scenario])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{path.stem}_scenario.tif"), codes)
    assert (found[hole] == predict_py.NODATA_LABEL).all()
    inside = away_from_edges(codes) & ~hole
    np.testing.assert_array_equal(found[inside], scenarios[scenario][inside])


def test_reading_nodata_as_values_gives_other_labels(checkpoint, area, scenarios, tmp_path):
    """What the test above guards against: today's reading, a hole as 0 m and a collar as black pixels,
    predicts the holes in the full scenario and gets other labels there."""
    rgir, ndsm = area
    tifffile.imwrite(tmp_path / "rgir.tif", np.where(COLLAR[..., None], 0, rgir).astype(np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "ndsm.tif", np.where(HOLE, 0, ndsm).astype(np.uint8))
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "rgir.tif", "--ndsm", tmp_path / "ndsm.tif")
    inside = away_from_edges(expected_scenarios())
    for scenario, region in (("missing_ndsm", ~COLLAR & HOLE), ("missing_rgir", COLLAR & ~HOLE)):
        assert (found[inside & region] != scenarios[scenario][inside & region]).mean() > 0.05, scenario


def test_outputs_declare_the_nodata_label_and_carry_the_palette(checkpoint, area, tmp_path):
    inputs = holed_files(tmp_path, area, "nan and declared")
    predict_py.main(["--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint), *map(str, inputs),
                     "--probabilities", "--scenario-map"])
    with tifffile.TiffFile(tmp_path / "out" / "rgir_labels.tif") as tiff:
        page = tiff.pages.first
        found, colours = page.asarray(), page.colormap
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.samplesperpixel == 1
        assert page.tags.valueof(raster.GDAL_NODATA) == "255"
    assert colours.shape == (3, 256) and colours.dtype == np.uint16
    np.testing.assert_array_equal(colours[:, : len(data.PALETTE)].T, data.PALETTE.astype(np.uint16) * 257)
    assert (colours[:, predict_py.NODATA_LABEL] == 0).all()  # black
    with tifffile.TiffFile(tmp_path / "out" / "rgir_scenario.tif") as tiff:
        assert tiff.pages.first.tags.valueof(raster.GDAL_NODATA) == "255"
    no_data = COLLAR & HOLE
    probabilities = tifffile.imread(tmp_path / "out" / "rgir_probabilities.tif")
    assert (probabilities[no_data] == 0).all() and (probabilities[~no_data].sum(-1) > 250).all()
    assert (found[no_data] == 255).all() and (found[~no_data] < 6).all()


def test_a_modality_without_any_data_is_missing(checkpoint, area, scenarios, tmp_path, capsys):
    rgir, _ = area
    tifffile.imwrite(tmp_path / "rgir.tif", rgir, photometric="rgb")
    tifffile.imwrite(tmp_path / "ndsm.tif", np.full((SIZE, SIZE), np.nan, np.float32))
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "rgir.tif", "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, scenarios["missing_ndsm"])
    notices = [line for line in capsys.readouterr().out.splitlines() if "no pixel has data" in line]
    assert notices == [f"notice: {tmp_path / 'ndsm.tif'}: no pixel has data (all nodata, masked or NaN); "
                       "predicted as if the NDSM were missing"]


def test_no_data_in_any_modality_given_is_an_error(checkpoint, area, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "rgir.tif", np.zeros_like(area[0]), photometric="rgb")
    tifffile.imwrite(tmp_path / "ndsm.tif", np.full((SIZE, SIZE), -9999, np.float32))
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "rgir.tif", "--ndsm", tmp_path / "ndsm.tif",
                   "--rgir-nodata", 0, "--ndsm-nodata", -9999)
    assert f"rgir.tif and {tmp_path / 'ndsm.tif'}: no pixel has data" in line
    line = refused_labels(capsys, checkpoint, tmp_path, "--ndsm", tmp_path / "ndsm.tif", "--ndsm-nodata", -9999)
    assert line.startswith(f"error: {tmp_path / 'ndsm.tif'}: no pixel has data")


def test_a_mask_of_another_size_is_an_error(checkpoint, area, tmp_path, capsys):
    write_with_mask(tmp_path / "rgir.tif", area[0], np.ones((SIZE, SIZE - 1), bool), photometric="rgb")
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "rgir.tif")
    assert "rgir.tif: its internal mask is 128 x 127 pixels, the image 128 x 128" in line


def test_an_orthophoto_pixel_is_nodata_only_where_every_band_holds_the_value(tmp_path):
    rgir = np.full((2, 4, 3), 90, np.uint8)
    rgir[0, 0] = 0  # the collar: every band 0
    rgir[0, 1, 0] = 0  # dark pixels: some bands 0
    rgir[0, 2, 1:] = 0
    rgir[1, 3] = (0, 0, 7)
    tifffile.imwrite(tmp_path / "rgir.tif", rgir, photometric="rgb", extratags=[(raster.GDAL_NODATA, "s", 0, "0", True)])
    layer = raster.read_orthophoto(tmp_path / "rgir.tif")
    expected = np.ones((2, 4), bool)
    expected[0, 0] = False
    np.testing.assert_array_equal(layer.valid, expected)
    np.testing.assert_array_equal(layer.pixels, rgir)


@pytest.mark.parametrize("dtype, tag, value", [
    (np.float32, "nan", np.nan), (np.float32, "-9999.5", -9999.5),
    (np.float32, "-3.4028234663852886e+38", -FLOAT32_MAX),  # the float32 minimum as GDAL writes it
    (np.float32, "-3.40282e+38", -FLOAT32_MAX), (np.float32, "3.40282e+38", FLOAT32_MAX),  # as %g prints them
    (np.float64, "-3.40282e+38", -3.40282e+38),  # a float64 file holds the value itself
    (np.uint8, "nan", None)])  # no pixel of an integer file is NaN
def test_nodata_values_that_are_not_integers_mark_their_pixels(tmp_path, caplog, dtype, tag, value):
    heights = np.full((4, 5), 25 if dtype == np.uint8 else 2.5, dtype)  # 2.5 m, level 25 of an 8-bit NDSM
    hole = np.zeros((4, 5), bool)
    if value is not None:
        hole[1:3, 2:] = True
        heights[hole] = value
    tifffile.imwrite(tmp_path / "ndsm.tif", heights, extratags=[(raster.GDAL_NODATA, "s", 0, tag, True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor an overflow from the limit taken for a height
        layer = raster.read_height_model(tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(np.ones((4, 5), bool) if layer.valid is None else layer.valid, ~hole)
    np.testing.assert_array_equal(layer.pixels, np.where(hole, 0, 25))
    assert caplog.records == []  # tifffile's own parse of the tag is not logged: a user sees one line at most


def test_an_unusual_nodata_tag_leaves_one_line_on_stderr(checkpoint, area, tmp_path):
    """tifffile logs its own parse of the tag besides the project's error; pytest captures logging, so a
    process of its own shows what a user sees."""
    tifffile.imwrite(tmp_path / "ndsm.tif", area[1], extratags=[(raster.GDAL_NODATA, "s", 0, "none", True)])
    result = subprocess.run([sys.executable, "predict.py", "--out", tmp_path / "out", "--ndsm", tmp_path / "ndsm.tif",
                             "--checkpoint", checkpoint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'ndsm.tif'}: its GDAL_NODATA tag ({raster.GDAL_NODATA}) is 'none'")


def test_an_8_bit_ndsm_stores_its_nodata_pixels_as_0(tmp_path):
    ndsm = np.arange(1, 21, dtype=np.uint8).reshape(4, 5) * 10
    ndsm[0, :2] = 255
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm, extratags=[(raster.GDAL_NODATA, "s", 0, "255", True)])
    layer = raster.read_height_model(tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(layer.valid, ndsm != 255)
    np.testing.assert_array_equal(layer.pixels, np.where(ndsm == 255, 0, ndsm))


def test_fill_keeps_the_data_and_fills_holes_from_their_rim():
    ramp = torch.arange(32.0).expand(1, 2, 32, 32).clone()  # (B, C, h, w): rising left to right
    valid = np.ones((1, 32, 32), bool)
    valid[0, 8:20, 10:22] = False
    filled = predict_py.filled_by_pull_push(ramp, valid)
    has_data = torch.from_numpy(valid[0])
    assert torch.equal(filled[0, :, has_data], ramp[0, :, has_data])
    hole = filled[0, 0, ~has_data]
    assert 9 <= hole.min() and hole.max() <= 22  # between the values at its rim: no step, no outlier
    assert filled[0, 0, 14, 11] < filled[0, 0, 14, 15] < filled[0, 0, 14, 20]  # the ramp goes on through the hole
    assert predict_py.filled_by_pull_push(ramp, None) is ramp


# ------------------------------------------------------------------ the ISPRS readers

def test_dsm_fallback_ignores_holes_and_marks_them(tmp_path, capsys):
    """test_data.py's sloping terrain with two 12 m buildings, given as a DSM with holes: -9999 declared
    as nodata over a corner of the ground and a building's edge, NaN over a strip. Read as heights, the
    holes would pull the ground down to -9999 m and clip every height near them to 25.5 m."""
    height, width = 300, 400
    ys, xs = np.mgrid[:height, :width]
    objects = np.zeros((height, width), np.float32)
    objects[40:110, 50:140] = 12
    objects[180:260, 250:330] = 12
    dsm = (250 + 0.004 * xs + 0.002 * ys + objects).astype(np.float32)
    holes = np.zeros((height, width), bool)
    holes[150:240, 200:290] = True  # 3 x 3 blocks without any data, and half of a roof
    dsm[holes] = -9999
    dsm[20:30, :] = np.nan
    holes[20:30, :] = True
    label = np.where(objects > 0, 1, 0).astype(np.uint8)
    for path, array, options in (("top/top_mosaic_09cm_area3.tif", np.zeros((height, width, 3), np.uint8), {}),
                                 ("gts_for_participants/top_mosaic_09cm_area3.tif", data.labels_to_rgb(label), {}),
                                 ("dsm/dsm_09cm_matching_area3.tif", dsm,
                                  {"extratags": [(raster.GDAL_NODATA, "s", 0, "-9999", True)]})):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / path, array, **options)
    (tile,) = data.load_split(tmp_path, "train")
    assert "notice: area3: 10.1% of the NDSM without data, stored as 0" in capsys.readouterr().out
    np.testing.assert_array_equal(tile.ndsm_valid, ~holes)
    assert tile.rgir_valid is None and (tile.ndsm[holes] == 0).all()
    error = np.abs(tile.ndsm / data.NDSM_LEVELS_PER_METRE - objects)[~holes]
    assert np.percentile(error, 90) < 0.4 and error.max() < 1  # metres, as without holes


def test_isprs_orthophoto_with_a_collar_is_stored_as_0_and_marked(tmp_path):
    synth.synthesize(tmp_path, "vaihingen", tiles=1, size=48)
    (expected,) = data.load_split(tmp_path, "train")
    (path,) = tmp_path.rglob("top/top_mosaic_09cm_area1.tif")
    collar = np.zeros(expected.label.shape, bool)
    collar[:, :10] = True
    tifffile.imwrite(path, np.where(collar[..., None], 0, expected.rgir).astype(np.uint8), photometric="rgb",
                     extratags=[(raster.GDAL_NODATA, "s", 0, "0", True)])
    (tile,) = data.load_split(tmp_path, "train")
    np.testing.assert_array_equal(tile.rgir_valid, ~collar)
    np.testing.assert_array_equal(tile.rgir[~collar], expected.rgir[~collar])
    assert tile.ndsm_valid is None and (tile.rgir[collar] == 0).all()
