"""Orthophotos and NDSMs as mapping agencies deliver them: compressed, tiled, BigTIFF, 16-bit,
with an alpha band, in other band orders. Each kind is written here with tifffile and labelled
through the real prediction path (predict.main with a tiny checkpoint), then compared with the
labels of the plain 8-bit file it was made from."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import data
import raster
import synth
from test_predict import labels, refused_labels, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Georeferencing of a projected CRS (UTM zone 32N, metres) with 9 cm pixels, as Vaihingen's
UTM = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632)
WGS84 = (1, 1, 0, 2, 1024, 0, 1, 2, 2048, 0, 1, 4326)  # geographic: the pixel scale is in degrees


def georeference(pixel_size, geokeys=UTM):
    return [(33550, "d", 3, (pixel_size, pixel_size, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 497000.0, 5420000.0, 0.0), True),
            (34735, "H", len(geokeys), geokeys, True)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """test_predict.py's tiny model, trained on "vaihingen" for the pixel-size notice."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt", dataset="vaihingen")


@pytest.fixture(scope="module")
def scene():
    """(H, W, 3) IRRG and (H, W) NDSM, uint8, smooth enough to survive JPEG, of sizes not multiples of 16."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    smooth = np.array(Image.fromarray(coarse[..., :3]).resize((77, 61), Image.BILINEAR))
    noise = rng.integers(-20, 21, smooth.shape)
    rgir = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    ndsm = np.array(Image.fromarray(coarse[..., 3]).resize((77, 61), Image.BILINEAR))
    return rgir, ndsm


@pytest.fixture(scope="module")
def reference(checkpoint, scene, tmp_path_factory):
    """The labels of the plain files: 8-bit IRRG and 8-bit NDSM, uncompressed."""
    root = tmp_path_factory.mktemp("reference")
    rgir, ndsm = scene
    tifffile.imwrite(root / "area.tif", rgir, photometric="rgb")
    tifffile.imwrite(root / "ndsm.tif", ndsm)
    found = labels(checkpoint, root / "out", "--rgir", root / "area.tif", "--ndsm", root / "ndsm.tif")
    assert len(np.unique(found)) > 1  # a constant map would hide any difference
    return found


# ------------------------------------------------------------------ compression and layout

# name: (TIFF compression code, tifffile options)
LOSSLESS = {
    "lzw-tiled-predictor": (5, dict(compression="lzw", tile=(16, 16), predictor=True)),  # GDAL's PREDICTOR=2
    "lzw-striped": (5, dict(compression="lzw", rowsperstrip=8)),
    "deflate-tiled": (8, dict(compression="zlib", tile=(32, 32))),
    "zstd-tiled": (50000, dict(compression="zstd", tile=(16, 16))),
    "packbits-striped": (32773, dict(compression="packbits", rowsperstrip=16)),
    "bigtiff-lzw-tiled": (5, dict(compression="lzw", tile=(16, 16), bigtiff=True)),
    "bigtiff-striped": (1, dict(bigtiff=True, rowsperstrip=8)),
}


@pytest.mark.parametrize("kind", LOSSLESS)
def test_lossless_files_give_the_labels_of_the_uncompressed_ones(checkpoint, scene, reference, tmp_path, kind):
    rgir, ndsm = scene
    compression, options = LOSSLESS[kind]
    tifffile.imwrite(tmp_path / "area.tif", rgir, photometric="rgb", **options)
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm, **options)
    with tifffile.TiffFile(tmp_path / "area.tif") as tiff:  # the file is of the kind named
        page = tiff.pages.first
        assert page.compression == compression and page.is_tiled == ("tile" in options)
        assert tiff.is_bigtiff == ("bigtiff" in options)
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, reference)


def test_jpeg_in_tiff_gives_the_labels_of_its_decoded_pixels(checkpoint, scene, tmp_path):
    rgir, ndsm = scene
    tifffile.imwrite(tmp_path / "jpeg.tif", rgir, photometric="rgb", compression="jpeg", tile=(16, 16))
    decoded = tifffile.imread(tmp_path / "jpeg.tif")
    assert decoded.shape == rgir.shape and (decoded != rgir).any()  # lossy: a real JPEG
    tifffile.imwrite(tmp_path / "decoded.tif", decoded, photometric="rgb")
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    found = labels(checkpoint, tmp_path / "jpeg", "--rgir", tmp_path / "jpeg.tif", "--ndsm", tmp_path / "ndsm.tif")
    expected = labels(checkpoint, tmp_path / "plain", "--rgir", tmp_path / "decoded.tif",
                      "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, expected)
    assert len(np.unique(found)) > 1


def test_a_codec_that_cannot_be_decoded_is_named_not_called_corrupt(checkpoint, scene, tmp_path, capsys):
    path = tmp_path / "thunderscan.tif"
    tifffile.imwrite(path, scene[0], photometric="rgb", compression="packbits")
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages.first.tags["Compression"].overwrite(32809)  # ThunderScan: no decoder in tifffile or imagecodecs
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", path)
    assert "THUNDERSCAN-compressed" in line and "DEFLATE" in line and "corrupt" not in line


def test_without_imagecodecs_the_missing_package_is_named(scene, tmp_path):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, scene[0], photometric="rgb", compression="lzw")
    script = ("import sys; sys.modules['imagecodecs'] = None  # as if it were not installed\n"
              "import data, raster; data.exit_on_user_error(lambda: raster.read_orthophoto(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", script, path], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "LZW-compressed" in result.stderr and "imagecodecs" in result.stderr and "corrupt" not in result.stderr


def test_a_truncated_compressed_file_is_called_truncated(checkpoint, scene, tmp_path, capsys):
    path = tmp_path / "area.tif"
    tifffile.imwrite(path, scene[0], photometric="rgb", compression="zlib", tile=(16, 16))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated or corrupt" in refused_labels(capsys, checkpoint, tmp_path, "--rgir", path)


# ------------------------------------------------------------------ bit depth

def test_16_bit_copy_of_an_8_bit_file_gives_its_labels(checkpoint, scene, reference, tmp_path):
    rgir, ndsm = scene
    tifffile.imwrite(tmp_path / "area.tif", rgir.astype(np.uint16) * 257, photometric="rgb", compression="lzw")
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, reference)


def test_the_scaling_rule_is_exact(tmp_path):
    values = np.arange(256)
    twelve_bit = np.rint(values * (4095 / 255))
    image = np.stack([values * 257, twelve_bit, values], -1)[None].astype(np.uint16)  # 16-, 12-, 8-bit ranges
    max_sample_value = (281, "H", 3, (65535, 4095, 255), True)
    tifffile.imwrite(tmp_path / "ramp.tif", image, photometric="rgb", extratags=[max_sample_value])
    rgir = raster.read_orthophoto(tmp_path / "ramp.tif").pixels  # IR, R, G from the declared MaxSampleValue
    np.testing.assert_array_equal(rgir[0], np.stack([values] * 3, -1))


def test_each_band_is_scaled_by_its_own_declared_maximum(tmp_path):
    maxima = (1000, 2000, 3000, 4000)  # R, G, B, IR: IR, R, G are not the first three
    half = np.broadcast_to(np.array(maxima, np.uint16) // 2, (2, 2, 4))
    tifffile.imwrite(tmp_path / "rgbir.tif", half, photometric="rgb", extrasamples=[0],
                     extratags=[(281, "H", 4, maxima, True)])
    assert (raster.read_orthophoto(tmp_path / "rgbir.tif").pixels == 128).all()  # 127.5, halves up


def write_packed_12_bit(path, rgb):
    """An RGB TIFF of 12-bit samples, as GDAL's NBITS=12 writes: each row's samples packed MSB first,
    padded to whole bytes. Packed here: imagecodecs' own encoder arrived only in its 2026 releases."""
    rows = rgb.reshape(rgb.shape[0], -1).astype(np.uint16)
    bits = ((rows[..., None] >> np.arange(11, -1, -1)) & 1).astype(np.uint8).reshape(rgb.shape[0], -1)
    tifffile.imwrite(path, iter([np.packbits(bits, axis=1).tobytes()]), shape=rgb.shape, dtype=np.uint16,
                     photometric="rgb", bitspersample=12)


@pytest.mark.parametrize("declared", ["--max-value", "MaxSampleValue", "BitsPerSample"])
def test_12_bit_data_gives_the_labels_of_its_8_bit_version(checkpoint, scene, reference, tmp_path, declared):
    rgir, ndsm = scene
    twelve_bit = np.rint(rgir * (4095 / 255)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    if declared == "BitsPerSample":
        write_packed_12_bit(tmp_path / "area.tif", twelve_bit)
    else:
        extratags = [(281, "H", 1, 4095, True)] if declared == "MaxSampleValue" else []
        tifffile.imwrite(tmp_path / "area.tif", twelve_bit, photometric="rgb", extratags=extratags)
    flags = ["--max-value", 4095] if declared == "--max-value" else []
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "ndsm.tif",
                   *flags)
    np.testing.assert_array_equal(found, reference)
    if declared == "--max-value":  # without it, 4095 is a sixteenth of the uint16 range: a dark image
        dark = labels(checkpoint, tmp_path / "dark", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "ndsm.tif")
        assert (dark != reference).any()


def test_8_bit_data_with_a_declared_maximum_below_255_is_scaled_to_0_255(tmp_path):
    values = np.arange(128, dtype=np.uint8)  # 7-bit data in 8-bit samples, declared as such
    tifffile.imwrite(tmp_path / "seven_bit.tif", np.stack([values] * 3, -1)[None], photometric="rgb",
                     extratags=[(281, "H", 1, 127, True)])
    rgir = raster.read_orthophoto(tmp_path / "seven_bit.tif").pixels
    np.testing.assert_array_equal(rgir[0], np.stack([np.floor(values / 127 * 255 + 0.5)] * 3, -1))


def test_packed_12_bit_data_is_read_exactly_over_its_whole_range(tmp_path):
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    write_packed_12_bit(tmp_path / "packed.tif", np.stack([values] * 3, -1))
    assert tifffile.TiffFile(tmp_path / "packed.tif").pages[0].bitspersample == 12
    rgir = raster.read_orthophoto(tmp_path / "packed.tif").pixels
    white = 2**12 - 1  # the largest 12-bit value, not 2**12
    np.testing.assert_array_equal(rgir, np.stack([np.floor(values / white * 255 + 0.5)] * 3, -1))


def test_negative_values_of_a_signed_orthophoto_read_as_0(tmp_path):
    values = np.array([-32768, -1, 0, 1, 128, 32767], np.int16)
    tifffile.imwrite(tmp_path / "signed.tif", np.stack([values] * 3, -1)[None], photometric="rgb")
    rgir = raster.read_orthophoto(tmp_path / "signed.tif").pixels
    np.testing.assert_array_equal(rgir[0, :, 0], [0, 0, 0, 0, 1, 255])  # value * 255 / 32767, rounded


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_max_value_beyond_the_data_type_is_refused(checkpoint, scene, tmp_path, capsys, dtype):
    tifffile.imwrite(tmp_path / "area.tif", scene[0].astype(dtype), photometric="rgb")
    top = np.iinfo(dtype).max
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "area.tif", "--max-value", 2**31)
    assert line.startswith(f"error: --max-value 2147483648: above {top}, the largest value of")
    # the data type's own top is the default range, not beyond it
    found = labels(checkpoint, tmp_path / "top", "--rgir", tmp_path / "area.tif", "--max-value", top)
    np.testing.assert_array_equal(found, labels(checkpoint, tmp_path / "default", "--rgir", tmp_path / "area.tif"))


def test_a_declared_maximum_beyond_int32_is_scaled_without_overflow(tmp_path):
    image = np.full((2, 2, 3), 65535, np.uint16)
    tifffile.imwrite(tmp_path / "area.tif", image, photometric="rgb", extratags=[(281, "I", 1, 2**31, True)])
    assert (raster.read_orthophoto(tmp_path / "area.tif").pixels == 0).all()  # 65535 * 255 / 2**31 rounds to 0


def test_a_max_sample_value_tag_of_another_count_is_named_not_called_corrupt(checkpoint, scene, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "area.tif", scene[0], photometric="rgb", extratags=[(281, "H", 2, (255, 255), True)])
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "area.tif")
    assert "MaxSampleValue tag (281) holds 2 values for 3 bands" in line and "corrupt" not in line


def test_centimetre_ndsm_with_its_unit_gives_the_labels_of_the_8_bit_one(checkpoint, scene, reference, tmp_path,
                                                                         capsys):
    rgir, ndsm = scene
    tifffile.imwrite(tmp_path / "area.tif", rgir, photometric="rgb")
    tifffile.imwrite(tmp_path / "cm.tif", ndsm.astype(np.uint16) * 10, compression="zlib")  # 0.1 m levels -> cm
    found = labels(checkpoint, tmp_path / "metres", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "cm.tif",
                   "--ndsm-unit", 0.01)
    np.testing.assert_array_equal(found, reference)
    line = refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "cm.tif")
    assert "cm.tif" in line and "uint16" in line and "--ndsm-unit" in line


# ------------------------------------------------------------------ alpha and band order

@pytest.mark.parametrize("extrasample", [1, 2], ids=["associated", "unassociated"])
def test_an_opaque_alpha_band_gives_the_labels_of_the_file_without_it(checkpoint, scene, reference, tmp_path,
                                                                      capsys, extrasample):
    rgir, ndsm = scene
    opaque = np.full(rgir.shape[:2] + (1,), 255, np.uint8)
    tifffile.imwrite(tmp_path / "area.tif", np.concatenate([rgir, opaque], -1), photometric="rgb",
                     extrasamples=[extrasample], compression="lzw")
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.tif", "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, reference)  # IR, R, G + alpha is Vaihingen's IRRG
    notice = f"notice: {tmp_path / 'area.tif'}: band 4 is an alpha band, its 0 marks pixels without data"
    assert capsys.readouterr().out.splitlines()[0] == notice


def test_rgba_png_is_irrg_with_an_alpha_band(checkpoint, scene, reference, tmp_path, capsys):
    rgir, ndsm = scene
    Image.fromarray(np.dstack([rgir, np.full(rgir.shape[:2], 255, np.uint8)]), "RGBA").save(tmp_path / "area.png")
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.png", "--ndsm", tmp_path / "ndsm.tif")
    np.testing.assert_array_equal(found, reference)
    assert "area.png: band 4 is an alpha band, its 0 marks pixels without data" in capsys.readouterr().out


def potsdam_rgbir(rgir):
    """R, G, B, IR from IR, R, G, with a blue band of its own."""
    infrared, red, green = np.moveaxis(rgir, -1, 0)
    return np.stack([red, green, (red // 2 + green // 2), infrared], -1)


def test_potsdam_rgbir_with_and_without_alpha_gives_the_irrg_labels(checkpoint, scene, reference, tmp_path):
    rgir, ndsm = scene
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    rgbir = potsdam_rgbir(rgir)
    tifffile.imwrite(tmp_path / "rgbir.tif", rgbir, photometric="rgb", extrasamples=[0], compression="zlib")
    alpha = np.concatenate([rgbir, np.full(rgir.shape[:2] + (1,), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "rgbira.tif", alpha, photometric="rgb", extrasamples=[0, 2], compression="zlib")
    for name in ("rgbir", "rgbira"):
        found = labels(checkpoint, tmp_path / name, "--rgir", tmp_path / f"{name}.tif", "--ndsm", tmp_path / "ndsm.tif")
        np.testing.assert_array_equal(found, reference, err_msg=name)


def test_bands_flag_reads_any_order(checkpoint, scene, reference, tmp_path):
    rgir, ndsm = scene
    infrared, red, green = np.moveaxis(rgir, -1, 0)
    tifffile.imwrite(tmp_path / "ndsm.tif", ndsm)
    tifffile.imwrite(tmp_path / "gbrir.tif", np.stack([green, red // 3, red, infrared], -1), photometric="rgb",
                     extrasamples=[0])
    found = labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "gbrir.tif", "--ndsm", tmp_path / "ndsm.tif",
                   "--bands", "g,b,r,ir")
    np.testing.assert_array_equal(found, reference)
    # a 4th band tagged as alpha (tifffile's default for 4 samples) is data when --bands names all four
    tifffile.imwrite(tmp_path / "tagged.tif", potsdam_rgbir(rgir), photometric="rgb")
    found = labels(checkpoint, tmp_path / "tagged", "--rgir", tmp_path / "tagged.tif", "--ndsm", tmp_path / "ndsm.tif",
                   "--bands", "r,g,b,ir")
    np.testing.assert_array_equal(found, reference)


@pytest.mark.parametrize("bands, expected", [("r,g,b", "needs the infrared band"), ("r,g,b,ir", "expected a 4-band"),
                                             ("r,g,x", "as ir, r, g or b")])
def test_bands_that_cannot_be_read(checkpoint, scene, tmp_path, capsys, bands, expected):
    tifffile.imwrite(tmp_path / "area.tif", scene[0], photometric="rgb")
    assert expected in refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "area.tif", "--bands", bands)


def test_a_float_orthophoto_is_refused(checkpoint, scene, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "area.tif", scene[0].astype(np.float32) / 255, photometric="rgb")
    assert "float32" in refused_labels(capsys, checkpoint, tmp_path, "--rgir", tmp_path / "area.tif")


# ------------------------------------------------------------------ pixel size

@pytest.mark.parametrize("size, geokeys, noticed", [(0.09, UTM, False), (0.125, UTM, False), (0.2, UTM, True),
                                                    (0.05, UTM, True), (2e-6, WGS84, False)])
def test_pixel_size_far_from_the_training_data_is_noticed(checkpoint, scene, tmp_path, capsys, size, geokeys, noticed):
    tifffile.imwrite(tmp_path / "area.tif", scene[0], photometric="rgb", extratags=georeference(size, geokeys))
    labels(checkpoint, tmp_path / "out", "--rgir", tmp_path / "area.tif")
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("notice:")]
    assert len(notices) == noticed
    if noticed:
        assert f"pixels of {100 * size:.3g} cm, the model was trained on 9 cm (vaihingen)" in notices[0]


# ------------------------------------------------------------------ the ISPRS readers

def test_compressed_isprs_tiles_read_back_equal(tmp_path):
    synth.synthesize(tmp_path / "plain", "vaihingen", tiles=1, size=48)
    (expected,) = data.load_split(tmp_path / "plain", "train")
    for plain in (tmp_path / "plain").rglob("*.tif"):  # the orthophoto and the labels, recompressed
        compressed = tmp_path / "compressed" / plain.relative_to(tmp_path / "plain")
        compressed.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(compressed, tifffile.imread(plain), photometric="rgb", compression="lzw", tile=(16, 16))
    (ndsm,) = (tmp_path / "plain").rglob("*.jpg")
    compressed = tmp_path / "compressed" / ndsm.relative_to(tmp_path / "plain").with_suffix(".tif")
    compressed.parent.mkdir(parents=True)
    tifffile.imwrite(compressed, expected.ndsm, compression="zstd", tile=(16, 16))
    (tile,) = data.load_split(tmp_path / "compressed", "train")
    for field in ("rgir", "ndsm", "label", "label_eroded"):
        np.testing.assert_array_equal(getattr(tile, field), getattr(expected, field), err_msg=field)


def test_isprs_rgbir_is_read_by_its_name_whatever_its_alpha_tag(tmp_path):
    synth.synthesize(tmp_path, "potsdam", tiles=1, size=48)
    irrg_path = next(tmp_path.rglob("top_potsdam_2_10_IRRG.tif"))
    irrg = tifffile.imread(irrg_path)
    irrg_path.unlink()
    (tmp_path / "4_Ortho_RGBIR").mkdir()
    # tifffile tags a 4th sample of an RGB image as alpha; the name says R, G, B, IR
    tifffile.imwrite(tmp_path / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif", potsdam_rgbir(irrg),
                     photometric="rgb", compression="lzw")
    (tile,) = data.load_split(tmp_path, "train")
    np.testing.assert_array_equal(tile.rgir, irrg)
