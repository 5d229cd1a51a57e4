"""GeoTIFFs a GIS draws fast at any zoom, and one virtual mosaic of many: how predict.py writes its maps.

raster.py reads image files as they come; this file writes them. `StripWriter` takes an image in strips of rows,
top to bottom, and writes it tiled, DEFLATE-compressed, with overviews, its georeferencing, its nodata value on
every level and a record of what made it (`provenance_tag`), under a temporary name renamed when complete.
`write_mosaics` places the files of a folder in one GDAL virtual mosaic (VRT) by their georeferencing.
"""

import json
import math
import os
import xml.etree.ElementTree as ET
from contextlib import nullcontext

import numpy as np
import tifffile

import raster

TILE = 256  # side of the outputs' tiles, as in a Cloud Optimized GeoTIFF; a GIS reads the tiles it shows
# GDAL's metadata tag, XML <GDALMetadata><Item name="...">value</Item></GDALMetadata>; gdalinfo lists its items
GDAL_METADATA = 42112
PROVENANCE_ITEM = "DIS2_PROVENANCE"


def nodata_tag(value):
    """The GDAL_NODATA tag declaring `value` as the value of pixels without data, as GDAL and QGIS read it."""
    return (raster.GDAL_NODATA, "s", 0, str(value), True)


def provenance_tag(record: dict):
    """GDAL_METADATA holding `record` (what made the file) as JSON, for a rerun to compare with its own."""
    root = ET.Element("GDALMetadata")
    ET.SubElement(root, "Item", name=PROVENANCE_ITEM).text = json.dumps(record, sort_keys=True)
    return (GDAL_METADATA, "s", 0, ET.tostring(root, encoding="unicode"), True)


def provenance(path) -> dict | None:
    """The record of what made the GeoTIFF at `path` (provenance_tag); None for a file without one or unreadable."""
    try:
        with tifffile.TiffFile(path) as tiff:
            item = ET.fromstring(tiff.pages.first.tags.valueof(GDAL_METADATA)).find(f"Item[@name='{PROVENANCE_ITEM}']")
        return json.loads(item.text)
    except (OSError, ValueError, TypeError, AttributeError, ET.ParseError, tifffile.TiffFileError):
        return None


def differences(paths, record):
    """None where every file at `paths` exists and records `record` (provenance_tag); else "missing" where one is
    not there, "no record" where one records nothing, or the first key of `record` whose value differs."""
    if not all(path.exists() for path in paths):
        return "missing"
    for found in map(provenance, paths):
        if found is None:
            return "no record"
        if found != record:
            return next(key for key in [*record, *found] if found.get(key) != record.get(key))
    return None


def sync_folder(folder):
    """A folder's entries (a rename in it) on disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(temporary, path):
    """Renames the complete file `temporary` to `path`, its bytes on disk before the rename and the rename on disk
    after it: a power cut leaves the old file or the whole new one, never a name pointing at missing bytes."""
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    sync_folder(path.parent)


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


def tiles_halving_into(source, shape, dtype, reduce, halves):
    """The tiles of the image (h, w, S) in the raw file `source`, a row of tiles at a time, left to right and
    top to bottom, as tifffile writes them; on the way each row of tiles goes halved to the raw file `halves`
    (None: no overview below), so the next overview is made from this level with one row of tiles in memory."""
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
    leaves no file that looks complete. `tags` go on the full-resolution image; `nodata` (a value, None: none)
    is declared on every level, as GDAL's own overviews do, so a GIS reading an overview alone still has it."""

    def __init__(self, path, shape, dtype, photometric, tags, colormap=None, reduce="mode", nodata=None):
        self.path, self.dtype, self.photometric, self.tags = path, np.dtype(dtype), photometric, tags
        self.shape, self.colormap, self.reduce = (*shape[:2], shape[2] if len(shape) == 3 else 1), colormap, reduce
        self.nodata_tags = [] if nodata is None else [nodata_tag(nodata)]
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
                    tiff.write(tiles_halving_into(raw, shape, self.dtype, self.reduce, halves),
                               shape=shape if shape[2] > 1 else shape[:2], dtype=self.dtype,
                               photometric=self.photometric, colormap=self.colormap, planarconfig="contig",
                               tile=(TILE, TILE), compression="zlib", predictor=predictor,
                               subfiletype=1 if level else 0,  # 1: a reduced-resolution version of the first
                               extratags=self.nodata_tags + ([] if level else self.tags), metadata=None)
                self.temporary(level).unlink()
        replace_durably(self.temporary("tif"), self.path)

    def discard(self):
        self.file.close()
        for temporary in self.temporaries:
            temporary.unlink(missing_ok=True)


# -----------------------------------------------------------------------------
# One layer for the whole run: a GDAL virtual mosaic (VRT) of a folder's outputs

USER_DEFINED = 32767  # a GeoKey's value for a coordinate system given by its parameters, without an EPSG code
PIXEL_SIZE_TOLERANCE = 1e-6  # relative: sizes a GIS wrote as 0.09 and 0.09000000000001 are one grid


def north_up_grid(tags):
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
    code = keys.get(3072, keys.get(2048))  # ProjectedCSTypeGeoKey, else GeographicTypeGeoKey
    crs = f"EPSG:{code}" if code and code != USER_DEFINED else tuple(tags.get(c) for c in (34735, 34736, 34737))
    return crs, corner, size


def same_pixels(size, other):
    return all(math.isclose(a, b, rel_tol=PIXEL_SIZE_TOLERANCE) for a, b in zip(size, other))


GDAL_TYPES = {np.dtype(np.uint8): "Byte", np.dtype(np.float32): "Float32"}


def write_mosaics(out_dir, names, kinds):
    """OUT/<kind>.vrt for each kind of output: a GDAL virtual mosaic of the areas' files, which a GIS opens as
    one layer. Its areas share the coordinate system and pixel size of most areas; the others are named
    and left out. Returns the paths written."""
    grids, shapes = {}, {}
    for name in names:
        with tifffile.TiffFile(out_dir / f"{name}_labels.tif") as tiff:
            grids[name] = north_up_grid({tag.code: tag.value for tag in tiff.pages.first.tags})
            shapes[name] = tiff.pages.first.shape[:2]
    placed = [(crs, size) for crs, _, size in filter(None, grids.values())]
    if not placed:
        print(f"notice: no mosaic in {out_dir}: no area is georeferenced on a north-up grid")
        return []
    crs, size = max(placed, key=lambda p: sum(p[0] == q[0] and same_pixels(p[1], q[1]) for q in placed))
    describe = lambda system: system if isinstance(system, str) else "a coordinate system without an EPSG code"
    reasons = {name: "no georeferencing, or a rotated grid" if g is None else
               f"coordinate system {describe(g[0])}, the mosaic's is {describe(crs)}" if g[0] != crs else
               f"pixels of {g[2][0]:g} x {-g[2][1]:g}, the mosaic's are {size[0]:g} x {-size[1]:g}"
               for name, g in grids.items() if g is None or g[0] != crs or not same_pixels(g[2], size)}
    if reasons:
        print(f"notice: the mosaics in {out_dir} leave out "
              + ", ".join(f"{name} ({why})" for name, why in reasons.items()) + "; add those as layers of their own")
    if not isinstance(crs, str):
        print(f"notice: the mosaics in {out_dir} have no coordinate system: their areas' is user-defined (GeoKey "
              f"{USER_DEFINED}, no EPSG code); set it in the GIS, or with gdal_edit.py -a_srs on each .vrt")
    inside = [name for name in names if name not in reasons]
    # each area's top-left corner in pixels of the mosaic, whose corner is that of the area furthest up and left
    offsets = {name: ((grids[name][1][0] - grids[inside[0]][1][0]) / size[0],
                      (grids[name][1][1] - grids[inside[0]][1][1]) / size[1]) for name in inside}
    left, top = min(x for x, _ in offsets.values()), min(y for _, y in offsets.values())
    offsets = {name: (x - left, y - top) for name, (x, y) in offsets.items()}
    width = math.ceil(max(x + shapes[name][1] for name, (x, _) in offsets.items()) - 1e-6)
    height = math.ceil(max(y + shapes[name][0] for name, (_, y) in offsets.items()) - 1e-6)
    corner = (grids[inside[0]][1][0] + left * size[0], grids[inside[0]][1][1] + top * size[1])
    written = []
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
        replace_durably(temporary, out_dir / f"{kind}.vrt")
        written.append(out_dir / f"{kind}.vrt")
    return written
