"""One's own rasters (own_data.py): classes.json, labels to class ids, per-band normalisation from the training
split, the one-line errors of bad input, and train -> evaluate -> predict on 4 bands and 4 classes."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import data
import evaluate
import own_data
import predict
import synth
import train
from raster import GDAL_NODATA

CLASSES = {"classes": [{"name": "road", "value": 10}, {"name": "roof", "value": 20, "colour": [90, 90, 90]},
                       {"name": "grass", "value": 30}, {"name": "tree", "value": 40}], "ignore": 255}
VALUES = [10, 20, 30, 40, 255]
NODATA = [(GDAL_NODATA, "s", 0, "-9999", True)]


def write_area(root, split, name, size=32, seed=0, bands=4, height_size=None, label=None):
    """One area of a split: a `bands`-band uint16 image, float heights with a -9999 corner, value labels."""
    rng = np.random.default_rng(seed)
    for kind in own_data.KINDS:
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 4096, (size, size, bands), dtype=np.uint16)
    tifffile.imwrite(root / split / "image" / f"{name}.tif", image, photometric="minisblack", planarconfig="contig")
    height = (20 * rng.random((height_size or size,) * 2)).astype(np.float32)
    height[:4, :4] = -9999
    tifffile.imwrite(root / split / "height" / f"{name}.tif", height, extratags=NODATA)
    label = rng.choice(VALUES, (size, size)).astype(np.uint8) if label is None else label
    tifffile.imwrite(root / split / "label" / f"{name}.tif", label)
    return image, height, label


def write_own(root, classes=CLASSES, **area):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(classes))
    return {split: write_area(root, split, "a", seed=k, **area) for k, split in enumerate(data.SPLITS)}


def test_training_tiles_map_values_and_normalise_by_the_training_split(tmp_path):
    written = write_own(tmp_path)
    dataset, train_tiles, val_tiles, own = own_data.training_tiles(tmp_path)
    assert dataset == "own" and own["image_bands"] == 4 and own["height_bands"] == 1
    image, height, label = written["train"]
    # statistics of the training split alone, over the pixels with data
    valid = height != -9999
    image_mean, image_std = image.reshape(-1, 4).mean(0), image.reshape(-1, 4).std(0)
    n = own["normalisation"]
    assert np.allclose(n["image_mean"], image_mean) and np.allclose(n["image_std"], image_std)
    assert np.allclose(n["height_mean"], [height[valid].mean()]) and np.allclose(n["height_std"], [height[valid].std()])
    tile = train_tiles[0]
    assert tile.rgir.dtype == np.float32 and tile.rgir.shape == (32, 32, 4) and tile.ndsm.shape == (32, 32, 1)
    assert np.allclose(tile.rgir, (image - image_mean) / image_std, atol=1e-5)
    assert np.array_equal(tile.ndsm_valid, valid) and (tile.ndsm[~valid] == 0).all()
    assert np.allclose(tile.ndsm[valid, 0], (height[valid] - height[valid].mean()) / height[valid].std(), atol=1e-5)
    expected = np.select([label == v for v in VALUES], [0, 1, 2, 3, data.IGNORE_INDEX])
    assert np.array_equal(tile.label, expected)
    # the validation split is normalised by the training split's statistics, not its own
    val_image = written["val"][0]
    assert np.allclose(val_tiles[0].rgir, (val_image - image_mean) / image_std, atol=1e-5)


def test_colour_labels_and_label_nodata(tmp_path):
    colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    classes = {"classes": [{"name": f"c{i}", "colour": c} for i, c in enumerate(colours)], "ignore": [0, 0, 0]}
    ids = np.random.default_rng(1).integers(0, 4, (32, 32))  # 3: the ignore colour
    rgb = np.array(colours + [[0, 0, 0]], np.uint8)[ids]
    write_own(tmp_path, classes, label=rgb)
    _, tiles, _, own = own_data.training_tiles(tmp_path)
    assert np.array_equal(tiles[0].label, np.where(ids == 3, data.IGNORE_INDEX, ids))
    assert own_data.class_table(own).colours[:3].tolist() == colours
    # a label's nodata (GDAL_NODATA) is never trained on, whatever its value
    label = np.full((32, 32), 10, np.uint8)
    write_own(tmp_path / "nodata", label=label)
    label[0] = 77
    tifffile.imwrite(tmp_path / "nodata" / "train" / "label" / "a.tif", label,
                     extratags=[(GDAL_NODATA, "s", 0, "77", True)])
    _, tiles, _, _ = own_data.training_tiles(tmp_path / "nodata")
    assert (tiles[0].label[0] == data.IGNORE_INDEX).all() and (tiles[0].label[1:] == 0).all()


def test_clutter_is_reported_beside_the_means():
    own = {"classes": [{"name": "a", "value": 0, "colour": None, "clutter": False},
                       {"name": "b", "value": 1, "colour": None, "clutter": False},
                       {"name": "junk", "value": 2, "colour": None, "clutter": True}]}
    classes = own_data.class_table(own)
    confusion = np.array([[8, 2, 0], [1, 5, 4], [3, 0, 1]])
    result = evaluate.scores(confusion, classes)
    f1 = [2 * confusion[i, i] / (confusion[i].sum() + confusion[:, i].sum()) * 100 for i in range(3)]
    assert result["mF1"] == pytest.approx((f1[0] + f1[1]) / 2) and result["f1"]["junk"] == pytest.approx(f1[2])
    header = evaluate.table({"full": result}, classes).splitlines()[0]
    assert header.split() == ["Scenario", "a", "b", "mF1", "mIoU", "OA", "|", "Junk"]
    assert own_data.class_table(own).colours[:3].tolist() == [list(c) for c in own_data.PALETTE[:3]]


def test_isprs_table_unchanged():
    result = evaluate.scores(np.diag([5, 4, 3, 2, 1, 1]))
    lines = evaluate.table({"full": result}).splitlines()
    assert lines[0] == ("Scenario                   Imp. Surface     Building     Low Veg.         Tree          Car"
                        "     mF1    mIoU      OA | Clutter")
    assert lines[2].endswith("  100.00  100.00  100.00 |  100.00")


def train_main(argv, capsys):
    """train.py as typed: the exit status and stderr of a run that stops on a user error."""
    with pytest.raises(SystemExit) as stopped:
        data.exit_on_user_error(lambda: train.main(argv))
    return stopped.value.code, capsys.readouterr().err


def bad_label(root):
    label = np.full((32, 32), 10, np.uint8)
    label[5, 6] = 50
    tifffile.imwrite(root / "val" / "label" / "a.tif", label)
    return ["val/label/a.tif", "value 50"]


def bad_bands(root):
    write_area(root, "train", "b", bands=3)
    return ["train/image/b.tif: 3 bands", "train/image/a.tif has 4"]


def bad_grid(root):
    write_area(root, "train", "a", height_size=24)
    return ["train/height/a.tif: 24 x 24", "grid"]


def bad_georeference(root):
    image = tifffile.imread(root / "train" / "image" / "a.tif")
    height = tifffile.imread(root / "train" / "height" / "a.tif")
    place = lambda x: [(33550, "d", 3, (0.1, 0.1, 0.0), True), (33922, "d", 6, (0, 0, 0, x, 5000.0, 0), True)]
    tifffile.imwrite(root / "train" / "image" / "a.tif", image, photometric="minisblack", planarconfig="contig",
                     extratags=place(300.0))
    tifffile.imwrite(root / "train" / "height" / "a.tif", height, extratags=place(310.0) + NODATA)
    return ["train/height/a.tif: georeferenced on another grid"]


def missing_value(root):
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": "road", "value": 10}, {"name": "roof"}]}))
    return ['class "roof" has no "value"']


def malformed_json(root):
    (root / "classes.json").write_text('{"classes": [{"name": "road", "value": 10},]}')
    return ["classes.json: not valid JSON", "line 1"]


def no_classes(root):
    (root / "classes.json").write_text('{"labels": []}')
    return ['no "classes" list']


def unlabelled_image(root):
    (root / "train" / "label" / "a.tif").unlink()
    return ["train/image/a.tif: no label", "train/label"]


@pytest.mark.parametrize("spoil", [bad_label, bad_bands, bad_grid, bad_georeference, missing_value, malformed_json,
                                   no_classes, unlabelled_image])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, spoil):
    root = tmp_path / "own"
    write_own(root)
    said = spoil(root)
    code, err = train_main(["--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--patch", "32",
                            "--width", "4", "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert all(part in err for part in said), err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_evaluate_predict_round_trip(tmp_path, capsys):
    root, run, maps = tmp_path / "mine", tmp_path / "run", tmp_path / "maps"
    synth.main([str(root), "--layout", "own", "--tiles", "3", "--size", "64"])
    train.main(["--data", str(root), "--out", str(run), "--epochs", "1", "--samples-per-epoch", "4", "--batch-size",
                "2", "--patch", "32", "--width", "4", "--device", "cpu"])
    checkpoint = train.load_checkpoint(run / "best.pt")
    assert checkpoint["dataset"] == "own" and checkpoint["own_data"]["normalisation"]
    config = checkpoint["config"]
    assert (config["rgir_channels"], config["ndsm_channels"], config["num_classes"]) == (4, 1, 4)
    capsys.readouterr()

    evaluate.main(["--checkpoint", str(run / "best.pt"), "--device", "cpu", "--save-predictions", str(maps / "eval")])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Scenario"))
    assert header.split() == ["Scenario", "paved", "building", "grass", "tree", "mF1", "mIoU", "OA"]

    test = root / "test"
    height = tifffile.imread(test / "height" / "tile2.tif")
    runs = {"full": ["--rgir", test / "image", "--ndsm", test / "height"], "rgir": ["--rgir", test / "image" / "tile2.tif"],
            "ndsm": ["--ndsm", test / "height" / "tile2.tif"]}
    labels = {}
    for scenario, flags in runs.items():
        predict.main(["--checkpoint", str(run / "best.pt"), "--device", "cpu", "--out", str(maps / scenario),
                      *map(str, flags)])
        with tifffile.TiffFile(maps / scenario / "tile2_labels.tif") as tiff:
            labels[scenario], colour_table = tiff.pages.first.asarray(), tiff.pages.first.colormap
        assert set(np.unique(labels[scenario])) <= {10, 20, 30, 40, 255}
    # the user's values, in the user's colours (a default palette's for classes without one)
    assert (colour_table[:, 20] // 257).tolist() == [90, 90, 90]
    assert (colour_table[:, 10] // 257).tolist() == list(own_data.PALETTE[0])
    # with the image alone every pixel is labelled; with the heights alone none of their nodata hole is
    assert (labels["rgir"] != 255).all() and (labels["full"] != 255).all()
    assert np.array_equal(labels["ndsm"] == 255, height == synth.OWN_NODATA)
    # predict.py reads and normalises a file as evaluate.py's tiles: the same labels from the image alone
    colours = np.asarray(Image.open(maps / "eval" / "tile2_missing_ndsm.png"))
    table = own_data.class_table(checkpoint["own_data"])
    ids = np.argmax((colours[..., None, :] == table.colours[None, None, :4]).all(-1), -1)
    assert np.array_equal(labels["rgir"], table.values[ids])


def test_predict_refuses_another_band_count(tmp_path, capsys):
    root, run = tmp_path / "mine", tmp_path / "run"
    write_own(root)
    train.main(["--data", str(root), "--out", str(run), "--epochs", "1", "--samples-per-epoch", "2", "--batch-size",
                "2", "--patch", "32", "--width", "4", "--device", "cpu"])
    write_area(tmp_path / "new", "x", "b", bands=3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        data.exit_on_user_error(lambda: predict.main(["--checkpoint", str(run / "best.pt"), "--device", "cpu", "--out",
                                                      str(tmp_path / "maps"), "--rgir",
                                                      str(tmp_path / "new" / "x" / "image" / "b.tif")]))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "b.tif: 3 bands, the model was trained on 4" in err, err
    assert not list((tmp_path / "maps").glob("*.tif"))
