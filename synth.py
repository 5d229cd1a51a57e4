"""
The synthetic benchmark: city scenes written in the exact ISPRS Vaihingen or
Potsdam layout, so everything downstream runs without the real data.

    python synth.py data/quickstart --tiles 12 --size 512
    python synth.py data/potsdam --dataset potsdam --tiles 12 --size 2048 --seed 1

Each modality is drawn to carry what it carries in the real data
(docs/synthetic_benchmark.md; `python probe.py DIR` measures it). The NDSM is
what dense image matching makes of the scene: lawns and roads both at 0 m,
hedges and shrubs (0.5-2 m) in the low vegetation, trees as high as the
buildings, cars mostly lost, edges smeared over about a metre, holes, spikes,
noise; alone it finds roofs and crowns but hardly tells lawns or cars from
roads. In the IRRG vegetation is bright in infrared except in shadows, which
keep little of it, and some roofs (not most) have the roads' colours; alone it
finds nearly everything but those roofs and the cars.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from data import (
    CLASSES,
    DATASETS,
    IGNORE_INDEX,
    NDSM_LEVELS_PER_METRE,
    SPLITS,
    ArgumentParser,
    DataError,
    exit_on_user_error,
    file_name,
    known_dataset,
    labels_to_rgb,
    metres_to_uint8,
    positive_int,
    split_names,
)
from raster import GDAL_NODATA

# ---- Scenes -----------------------------------------------------------------------------

SYNTH_PX_PER_M = 10  # both datasets are drawn at 0.1 m per pixel (the real ones: 9 cm and 5 cm)
BOUNDARY_RADIUS = 3  # eroded labels: pixels about this close to another class are black, as in ISPRS
_IMPERVIOUS, _BUILDING, _LOW_VEGETATION, _TREE, _CAR, _CLUTTER = range(len(CLASSES))
_FLAT, _DOME, _GABLE = range(3)
_SYNTHETIC_FOLDERS = {
    "vaihingen": {
        "image": "ISPRS_semantic_labeling_Vaihingen/top",
        "ndsm": "ISPRS_semantic_labeling_Vaihingen/ndsm",
        "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE",
        "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
    },
    "potsdam": {"image": "3_Ortho_IRRG", "ndsm": "1_DSM_normalisation", "label": "5_Labels_all",
                "eroded": "5_Labels_all_noBoundary"},
}
_CAR_COLOURS = np.array(  # RGB: white, black, silver, grey, red, blue, green, beige
    [[225, 225, 225], [35, 35, 40], [165, 168, 172], [105, 108, 112], [175, 35, 30], [35, 55, 140],
     [40, 95, 60], [200, 185, 150]], np.float32)
_CAR_COLOUR_SHARE = [0.2, 0.2, 0.2, 0.2, 0.07, 0.07, 0.03, 0.03]  # mostly the greys of the roads
# Shadows are lit by the sky alone, which has little infrared: what is left of each band (IR, R, G)
# in a full shadow. Vegetation loses the infrared brightness that tells it from roads in the sun.
_SHADOW_LIGHT = np.array([0.2, 0.35, 0.4], np.float32)


@dataclass
class _Thing:
    """One object of a scene, in pixels; heights in metres, colours as (IR, R, G)."""

    layer: int  # painter's order: 0 ground surfaces, 1 cars, clutter, hedges and shrubs, 2 trees, 3 buildings
    cls: int
    outline: list  # polygon vertices, or the two corners of a crown's bounding box
    colour: tuple
    top: float = 0.0  # height; the ridge of a gable roof, the crown top of a tree
    eave: float = 0.0  # gable roofs: height at the eaves
    shape: int = _FLAT
    centre: tuple = (0.0, 0.0)
    normal: tuple = (0.0, 0.0)  # gable roofs: unit vector across the ridge
    half: float = 1.0  # domes: crown radius; gable roofs: half the width across the ridge (pixels)
    texture: float = 0.03  # amplitude of the brightness texture
    matched: float = 1.0  # the fraction of its height that dense matching recovers (cars: partly lost)


def _grey(rng, low, high, infrared=0.95):
    value = rng.uniform(low, high)
    return infrared * value, value, value  # asphalt and concrete reflect slightly less infrared


def _lawn(rng):
    return rng.uniform(165, 215), rng.uniform(85, 115), rng.uniform(95, 125)


def _leaves(rng):
    return rng.uniform(160, 215), rng.uniform(60, 95), rng.uniform(70, 105)  # infrared overlaps the lawns'


def _roof_colour(rng):
    kind = rng.choice(4, p=[0.15, 0.45, 0.22, 0.18])
    if kind == 0:
        return _grey(rng, 95, 165)  # concrete and bitumen: the roads' greys
    if kind == 1:
        return rng.uniform(150, 190), rng.uniform(120, 160), rng.uniform(70, 100)  # red tiles
    return _grey(rng, 50, 85, infrared=0.8) if kind == 2 else _grey(rng, 180, 220, infrared=1.05)  # slate, white


def _odd_colour(rng):
    return tuple(rng.permutation([rng.uniform(20, 70), rng.uniform(90, 160), rng.uniform(190, 250)]))


def _overlaps(box, other, gap):
    return box[0] < other[2] + gap and other[0] < box[2] + gap and box[1] < other[3] + gap and other[1] < box[3] + gap


class _City:
    """A street grid at a random angle. Objects are placed in metres (u along one street direction,
    v along the other) and stored in pixels."""

    def __init__(self, rng, height, width):
        self.rng, self.height, self.width = rng, height, width
        angle = rng.uniform(0, np.pi / 2)
        self.u_axis = np.array([np.cos(angle), np.sin(angle)])
        self.v_axis = np.array([-np.sin(angle), np.cos(angle)])
        self.centre = np.array([width, height]) / 2
        self.things = []

    def xy(self, u, v):
        return self.centre + (u * self.u_axis + v * self.v_axis) * SYNTH_PX_PER_M

    def corners(self, u0, v0, u1, v1):
        return [tuple(self.xy(u, v)) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]

    def visible(self, u0, v0, u1, v1):
        xs, ys = np.array(self.corners(u0, v0, u1, v1)).T
        return xs.max() >= 0 and xs.min() < self.width and ys.max() >= 0 and ys.min() < self.height

    def add(self, layer, cls, box, colour, **details):
        self.things.append(_Thing(layer, cls, self.corners(*box), colour, **details))

    def street(self, position, width, verge, along_u, length):
        """A street with 1.5 m sidewalks, some with a grass verge between kerb and sidewalk, and cars
        parked along both kerbs."""
        def box(s0, s1, c0, c1):  # along-street extent s, across-street extent c -> (u0, v0, u1, v1)
            return (s0, c0, s1, c1) if along_u else (c0, s0, c1, s1)

        rng, half = self.rng, width / 2
        self.add(0, _IMPERVIOUS, box(-length, length, position - half - verge - 1.5, position + half + verge + 1.5),
                 _grey(rng, 125, 175))
        if verge:  # with a row of trees on each, whose crowns hang over the road and the cars parked there
            self.add(0, _LOW_VEGETATION, box(-length, length, position - half - verge, position + half + verge),
                     _lawn(rng), texture=0.06)
            for middle in (position - half - verge / 2, position + half + verge / 2):
                for s in np.arange(-length + rng.uniform(0, 20), length, rng.uniform(14, 24)):
                    if self.visible(*box(s - 6, s + 6, middle - 6, middle + 6)):
                        self.tree(*((s, middle) if along_u else (middle, s)))
        self.add(0, _IMPERVIOUS, box(-length, length, position - half, position + half), _grey(rng, 90, 145))
        for s in np.arange(-length, length, 6.0):  # the dashed centre line
            self.add(0, _IMPERVIOUS, box(s, s + 3, position - 0.1, position + 0.1), _grey(rng, 210, 235))
        for kerb in (position - half + 1.2, position + half - 1.2):
            for s in np.arange(-length, length, 6.0):  # 6 m parking slots, 15% taken
                if rng.random() < 0.15 and self.visible(*box(s, s + 6, kerb - 1, kerb + 1)):
                    self.car(*((s + 3, kerb) if along_u else (kerb, s + 3)), along_u)

    def car(self, u, v, along_u):
        rng = self.rng
        length, width = rng.uniform(3.9, 5.0) / 2, rng.uniform(1.7, 2.0) / 2
        du, dv = (length, width) if along_u else (width, length)
        box = (u - du, v - dv, u + du, v + dv)
        r, g, b = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=_CAR_COLOUR_SHARE)] * rng.uniform(0.85, 1.1)
        # dense matching loses much of a car: it is small, and parked cars come and go between the images
        self.add(1, _CAR, box, (0.5 * (r + g + b) / 3 + 0.5 * r + 15, r, g), top=rng.uniform(1.3, 1.9), texture=0.05,
                 matched=rng.uniform(0.15, 0.7))

    def building(self, u0, v0, u1, v1, flat_roof=False):
        rng = self.rng
        colour = _roof_colour(rng)
        if flat_roof or rng.random() < 0.4:  # 3-20 m, mostly 5-10 m
            top = 3 + 17 * rng.beta(1.6, 3)
            self.add(3, _BUILDING, (u0, v0, u1, v1), colour, top=top, texture=0.05)  # gravel, stains
            for _ in range(int((u1 - u0) * (v1 - v0) / 250)):  # vents, skylights, plant rooms: what roads lack
                w, d = rng.uniform(1, 4, size=2)
                a, b = rng.uniform(u0 + 1, u1 - 1 - w), rng.uniform(v0 + 1, v1 - 1 - d)
                self.add(3, _BUILDING, (a, b, a + w, b + d), _grey(rng, 60, 230), top=top + rng.uniform(0.3, 2))
            return
        ridge_along_u = u1 - u0 >= v1 - v0  # the ridge runs along the longer side
        normal = self.v_axis if ridge_along_u else self.u_axis
        half = (v1 - v0 if ridge_along_u else u1 - u0) / 2 * SYNTH_PX_PER_M
        eave = rng.uniform(3, 9)
        self.add(3, _BUILDING, (u0, v0, u1, v1), colour, top=eave + rng.uniform(2, 5), eave=eave, shape=_GABLE,
                 centre=tuple(self.xy((u0 + u1) / 2, (v0 + v1) / 2)), normal=tuple(normal), half=half,
                 texture=0.1)  # rows of tiles or slates

    def dome(self, u, v, radius, cls, top, layer):
        """A round crown (trees) or bush (shrubs): leaves' colours, a strong texture."""
        (x, y), r = self.xy(u, v), radius * SYNTH_PX_PER_M
        self.things.append(_Thing(layer, cls, [(x - r, y - r), (x + r, y + r)], _leaves(self.rng), shape=_DOME,
                                  centre=(x, y), half=r, top=top, texture=0.22))

    def tree(self, u, v):
        """A crown 2-6 m in radius and 4.4-15 m high: as high as the buildings around it."""
        radius = self.rng.uniform(2, 6)
        self.dome(u, v, radius, _TREE, 2 + 1.2 * radius + self.rng.uniform(0, 6), layer=2)

    def trees(self, block, count, avoid=()):
        u0, v0, u1, v1 = block
        for _ in range(count):
            u, v = self.rng.uniform(u0, u1), self.rng.uniform(v0, v1)
            if not any(_overlaps((u, v, u, v), box, gap=1) for box in avoid):
                self.tree(u, v)

    def shrubs(self, block, count, avoid=()):
        """Low vegetation that is not flat: bushes 0.5-1.5 m in radius and 0.5-2 m high."""
        u0, v0, u1, v1 = block
        for _ in range(count):
            u, v = self.rng.uniform(u0, u1), self.rng.uniform(v0, v1)
            if not any(_overlaps((u, v, u, v), box, gap=1.5) for box in avoid):
                self.dome(u, v, self.rng.uniform(0.5, 1.5), _LOW_VEGETATION, self.rng.uniform(0.5, 2), layer=1)

    def hedges(self, block):
        """Hedges 0.8-1.5 m wide and 0.5-2 m high along some sides of a block, with gaps."""
        rng = self.rng
        u0, v0, u1, v1 = block
        for side in range(4):
            if rng.random() < 0.5:
                continue
            width, top = rng.uniform(0.8, 1.5), rng.uniform(0.5, 2)
            start, end = (u0, u1) if side < 2 else (v0, v1)
            edge = [v0 + 0.5, v1 - 0.5 - width, u0 + 0.5, u1 - 0.5 - width][side]
            for s in np.arange(start + rng.uniform(0, 8), end - 4, 12.0):
                stop = min(end, s + rng.uniform(4, 11))
                box = (s, edge, stop, edge + width) if side < 2 else (edge, s, edge + width, stop)
                self.add(1, _LOW_VEGETATION, box, _leaves(rng), top=top, texture=0.22)

    def clutter(self, box, raised):
        rng = self.rng
        if raised:  # containers, trailers, heaps
            self.add(1, _CLUTTER, box, _odd_colour(rng), top=rng.uniform(0.5, 3), texture=0.08)
        else:  # bare soil, water, odd ground surfaces
            colour = [(130, 150, 115), (25, 45, 70), _odd_colour(rng)][rng.integers(3)]
            self.add(0, _CLUTTER, box, colour, texture=0.1)

    def residential(self, u0, v0, u1, v1):
        """Houses with driveways (some with a car) and terraces, hedges, shrubs, garden clutter and trees."""
        rng, houses = self.rng, []
        for _ in range(int((u1 - u0) * (v1 - v0) / 12)):
            size = rng.uniform(14, 32), rng.uniform(10, 20)
            w, d = size if rng.random() < 0.5 else size[::-1]
            if u1 - u0 < w + 6 or v1 - v0 < d + 6:
                continue
            a, b = rng.uniform(u0 + 3, u1 - 3 - w), rng.uniform(v0 + 3, v1 - 3 - d)
            house = (a, b, a + w, b + d)
            if any(_overlaps(house, other, gap=3) for other in houses):
                continue
            houses.append(house)
            self.building(*house)
            self.driveway(house, (u0, v0, u1, v1))
            if rng.random() < 0.5:
                self.terrace(house)
            if rng.random() < 0.25:
                cu, cv = rng.uniform(u0, u1 - 2), rng.uniform(v0, v1 - 2)
                self.clutter((cu, cv, cu + rng.uniform(1, 3), cv + rng.uniform(1, 3)), raised=True)
        self.hedges((u0, v0, u1, v1))
        self.shrubs((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 150), avoid=houses)
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 50), avoid=houses)

    def terrace(self, house):
        """A paved terrace 2.5-5 m deep along one side of a house: pavement amid the lawns."""
        rng = self.rng
        a, b, c, d = house
        depth, side = rng.uniform(2.5, 5), rng.integers(4)
        box = [(a, b - depth, c, b), (a, d, c, d + depth), (a - depth, b, a, d), (c, b, c + depth, d)][side]
        self.add(0, _IMPERVIOUS, box, _grey(rng, 120, 185))

    def driveway(self, house, block):
        """A 3 m paved strip from the house to the nearest edge of its block."""
        rng = self.rng
        gaps = [house[0] - block[0], block[2] - house[2], house[1] - block[1], block[3] - house[3]]
        side = int(np.argmin(gaps))
        along_u = side < 2
        low, high = (house[1], house[3]) if along_u else (house[0], house[2])
        across = rng.uniform(low + 1.5, high - 1.5)
        start, end = [(block[0], house[0]), (house[2], block[2]), (block[1], house[1]), (house[3], block[3])][side]
        box = (start, across - 1.5, end, across + 1.5) if along_u else (across - 1.5, start, across + 1.5, end)
        self.add(0, _IMPERVIOUS, box, _grey(rng, 125, 175))
        if end - start > 5.5 and rng.random() < 0.3:
            middle = (start + end) / 2
            self.car(*((middle, across) if along_u else (across, middle)), along_u)

    def commercial(self, u0, v0, u1, v1):
        """One large flat-roofed building on a paved lot with lawn borders, and a row of parked cars."""
        rng = self.rng
        self.add(0, _IMPERVIOUS, (u0, v0, u1, v1), _grey(rng, 110, 170))
        for side in range(4):  # lawn borders: flat ground that is not pavement
            if rng.random() < 0.4:
                w = rng.uniform(2, 5)
                box = [(u0, v0 + 5, u0 + w, v1), (u1 - w, v0 + 5, u1, v1), (u0, v0, u1, v0 + w),
                       (u0, v1 - w, u1, v1)][side]
                self.add(0, _LOW_VEGETATION, box, _lawn(rng), texture=0.06)
                self.shrubs(box, int((box[2] - box[0]) * (box[3] - box[1]) / 40))
        margin = rng.uniform(4, 8)
        if u1 - u0 > 2 * margin + 10 and v1 - v0 > 2 * margin + 10:
            self.building(u0 + margin, v0 + margin, u1 - margin, v1 - margin - rng.uniform(0, (v1 - v0) / 4), True)
        for u in np.arange(u0 + 2, u1 - 2, 2.7):
            if rng.random() < 0.5:
                self.car(u, v0 + 3, along_u=False)

    def park(self, u0, v0, u1, v1):
        """Trees on lawn, with shrubs and hedges, crossed by footpaths; or a paved square with trees."""
        rng = self.rng
        if rng.random() < 0.3:
            self.add(0, _IMPERVIOUS, (u0, v0, u1, v1), _grey(rng, 130, 185))
            self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 150))
            return
        for _ in range(rng.integers(1, 4)):
            path, w = rng.uniform(u0, u1), rng.uniform(1, 2)
            self.add(0, _IMPERVIOUS, (path - w, v0, path + w, v1), _grey(rng, 120, 170))
        self.hedges((u0, v0, u1, v1))
        self.shrubs((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 100))
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 45))

    def parking(self, u0, v0, u1, v1):
        """A car park: rows of perpendicular parking bays, some with grass between, trees around."""
        rng = self.rng
        self.add(0, _IMPERVIOUS, (u0 + 2, v0 + 2, u1 - 2, v1 - 2), _grey(rng, 100, 160))
        for v in np.arange(v0 + 5, v1 - 5, 8.0):
            if rng.random() < 0.5:
                self.add(0, _LOW_VEGETATION, (u0 + 3, v + 3, u1 - 3, v + 5), _lawn(rng), texture=0.06)
            for u in np.arange(u0 + 4, u1 - 4, 2.7):
                if rng.random() < 0.4:
                    self.car(u, v, along_u=False)
        self.trees((u0, v0, u1, v1), int((u1 - u0 + v1 - v0) / 8), avoid=[(u0 + 3, v0 + 3, u1 - 3, v1 - 3)])

    def yard(self, u0, v0, u1, v1):
        """An odd ground surface (clutter) with containers and a few trees."""
        rng = self.rng
        a, b = rng.uniform(u0, (u0 + u1) / 2), rng.uniform(v0, (v0 + v1) / 2)
        self.clutter((a, b, a + rng.uniform(0.2, 0.5) * (u1 - u0), b + rng.uniform(0.2, 0.5) * (v1 - v0)), raised=False)
        for _ in range(rng.integers(2, 6)):
            cu, cv = rng.uniform(u0, u1 - 6), rng.uniform(v0, v1 - 6)
            self.clutter((cu, cv, cu + 2.5, cv + 6) if rng.random() < 0.5 else (cu, cv, cu + 6, cv + 2.5), raised=True)
        self.trees((u0, v0, u1, v1), int((u1 - u0) * (v1 - v0) / 400))

    def block(self, u0, v0, u1, v1):
        kinds = (self.residential, self.commercial, self.park, self.parking, self.yard)
        kinds[self.rng.choice(len(kinds), p=[0.5, 0.32, 0.06, 0.05, 0.07])](u0, v0, u1, v1)


def _street_lines(rng, half):
    """(centre, width, verge) in metres of parallel streets, 70-120 m apart, covering [-half, half];
    30% have a 1.5-3 m grass verge on each side."""
    lines, position = [], -half - rng.uniform(0, 70)
    while position < half + 70:
        lines.append((position, rng.uniform(5, 9), rng.uniform(1.5, 3) if rng.random() < 0.3 else 0.0))
        position += rng.uniform(70, 120)
    return lines


def _layout(rng, height, width) -> list[_Thing]:
    """The objects of one scene in painter's order."""
    city = _City(rng, height, width)
    half = np.hypot(height, width) / 2 / SYNTH_PX_PER_M
    across_u, across_v = _street_lines(rng, half), _street_lines(rng, half)
    for position, street_width, verge in across_u:
        city.street(position, street_width, verge, along_u=False, length=half + 10)
    for position, street_width, verge in across_v:
        city.street(position, street_width, verge, along_u=True, length=half + 10)
    for (ua, wa, ga), (ub, wb, gb) in zip(across_u, across_u[1:]):
        for (va, wc, gc), (vb, wd, gd) in zip(across_v, across_v[1:]):
            block = (ua + wa / 2 + ga + 1.5, va + wc / 2 + gc + 1.5, ub - wb / 2 - gb - 1.5, vb - wd / 2 - gd - 1.5)
            if city.visible(*block):
                city.block(*block)
    return sorted(city.things, key=lambda thing: thing.layer)


def _noise(rng, height, width, cell):
    """A smooth random field (values mostly within -1..1) with blobs about `cell` pixels across."""
    coarse = rng.standard_normal((height // cell + 3, width // cell + 3), dtype=np.float32)
    fine = F.interpolate(torch.from_numpy(coarse)[None, None], scale_factor=cell, mode="bicubic", align_corners=False)
    return fine[0, 0, :height, :width].numpy()


def _shifted(array, dy, dx):
    """out[y, x] = array[y + dy, x + dx], zero outside."""
    out = np.zeros_like(array)
    h, w = array.shape
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = array[
        max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def _shadows(metres, rng, factor=4):
    """Soft (H, W) mask in [0, 1] of the shadows cast by a random sun (35-55 degrees high), traced on a
    grid `factor` times coarser: a pixel is shaded if something towards the sun rises above its ray."""
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35, 55))
    low = metres[::factor, ::factor]
    rise = factor / SYNTH_PX_PER_M * np.tan(elevation)  # metres the ray to the sun climbs per coarse pixel
    caster = np.zeros_like(low)
    for step in range(1, int(low.max() / rise) + 1):
        dy, dx = round(step * np.sin(azimuth)), round(step * np.cos(azimuth))
        if abs(dy) >= low.shape[0] or abs(dx) >= low.shape[1]:
            break
        np.maximum(caster, _shifted(low, dy, dx) - step * rise, out=caster)
    shadow = torch.from_numpy((caster > low + 0.5).astype(np.float32))[None, None]
    soft = F.interpolate(shadow, scale_factor=factor, mode="bilinear", align_corners=False)
    return soft[0, 0, : metres.shape[0], : metres.shape[1]].numpy()


def _max_filter(array, radius):
    """Maximum over the (2 radius + 1)-pixel square around each pixel (edges: over the part inside),
    one axis at a time; on a boolean mask, a dilation."""
    for axis in (0, 1):
        grown = array.copy()
        target, source = np.moveaxis(grown, axis, 0), np.moveaxis(array, axis, 0)
        for step in range(1, radius + 1):
            np.maximum(target[step:], source[:-step], out=target[step:])
            np.maximum(target[:-step], source[step:], out=target[:-step])
        array = grown
    return array


def _dense_matching(metres, rng):
    """The NDSM, in metres, that dense image matching makes of the true heights: edges that wander in
    and out by up to 0.4 m; holes (failed matches, filled in with the ground) and spikes of 2-10 m
    (false matches), each in about 1% of the pixels; matching noise; everything smeared (Gaussian,
    sigma 0.25 m, so a roof edge rises over about a metre); and a ground that is off by a few
    decimetres here and there. Lawns and roads, both at 0 m, come out alike."""
    height, width = metres.shape
    wander = _noise(rng, height, width, cell=15) > 0
    metres = np.where(wander, _max_filter(metres, 4), -_max_filter(-metres, 4))
    faults = _noise(rng, height, width, cell=14)
    metres = np.where(faults < -2, 0, metres) + np.where(faults > 2.2, 2 + 10 * (faults - 2.2), 0)
    metres += 0.3 * rng.standard_normal(metres.shape, dtype=np.float32)  # white, correlated by the smear
    # smeared as uint8 (PIL's blur is fast) 1 m up, so that noise below the ground is not clipped before it
    smeared = Image.fromarray(metres_to_uint8(metres + 1)).filter(ImageFilter.GaussianBlur(2.5))
    return np.asarray(smeared, np.float32) / NDSM_LEVELS_PER_METRE - 1 + 0.3 * _noise(rng, height, width, cell=150)


def _render(things, rng, height, width):
    """Rasterise the objects: (H, W, 3) uint8 IRRG, (H, W) uint8 NDSM, (H, W) uint8 label."""
    image = Image.new("I", (width, height), 0)  # object index per pixel; 0 is the lawn underneath everything
    draw = ImageDraw.Draw(image)
    for index, thing in enumerate(things, start=1):
        (draw.ellipse if thing.shape == _DOME else draw.polygon)(thing.outline, fill=index)
    ids = np.asarray(image)
    lawn = _Thing(0, _LOW_VEGETATION, [], _lawn(rng))
    table = {field: np.array([getattr(thing, field) for thing in (lawn, *things)], np.float32)
             for field in ("cls", "shape", "colour", "top", "eave", "centre", "normal", "half", "texture", "matched")}

    label, metres = table["cls"].astype(np.uint8)[ids], table["top"][ids]
    grain = _noise(rng, height, width, cell=5)
    shade = 1 + table["texture"][ids] * grain
    shade += (ids == 0) * 0.1 * _noise(rng, height, width, cell=40)  # lawns are mowed, trodden, dried in patches
    leafy = (metres > 0) & ((label == _TREE) | (label == _LOW_VEGETATION))
    metres += leafy * 0.1 * metres * grain  # leaf clumps: bright and high
    shape = table["shape"][ids]
    ys, xs = np.nonzero(shape == _DOME)  # crowns and bushes: highest and brightest in the middle
    obj = ids[ys, xs]
    distance = np.hypot(xs - table["centre"][obj, 0], ys - table["centre"][obj, 1]) / table["half"][obj]
    profile = np.sqrt(np.clip(1 - distance**2, 0, 1))
    metres[ys, xs] *= 0.6 + 0.4 * profile
    shade[ys, xs] *= 0.8 + 0.2 * profile
    ys, xs = np.nonzero(shape == _GABLE)  # gable roofs: height falls linearly from the ridge, faces lit differently
    obj = ids[ys, xs]
    centre, normal, top, eave = table["centre"][obj], table["normal"][obj], table["top"][obj], table["eave"][obj]
    across = (xs - centre[:, 0]) * normal[:, 0] + (ys - centre[:, 1]) * normal[:, 1]
    metres[ys, xs] = top - (top - eave) * np.clip(np.abs(across) / table["half"][obj], 0, 1)
    shade[ys, xs] *= np.where(across > 0, 1.12, 0.88)

    shadow = _shadows(metres, rng)[..., None]
    colour = table["colour"][ids] * shade[..., None] * (1 - shadow * (1 - _SHADOW_LIGHT))
    colour += 3 * rng.standard_normal(colour.shape, dtype=np.float32)  # sensor noise
    rgir = Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    ndsm = metres_to_uint8(_dense_matching(metres * table["matched"][ids], rng))
    return np.array(rgir), ndsm, label


def _erode_boundaries(label):
    """The label with IGNORE_INDEX on pixels within BOUNDARY_RADIUS of another class (square distance)."""
    border = np.zeros(label.shape, bool)  # pixels with a 4-neighbour of another class
    across_x, across_y = label[:, 1:] != label[:, :-1], label[1:] != label[:-1]
    border[:, 1:] |= across_x
    border[:, :-1] |= across_x
    border[1:] |= across_y
    border[:-1] |= across_y
    return np.where(_max_filter(border, BOUNDARY_RADIUS - 1), np.uint8(IGNORE_INDEX), label)


def _synthetic_names(dataset, count):
    """Tile names for `count` synthetic tiles: round-robin over the train, val and test lists (so
    every split has a tile from count = 3 on), skipping a list once it is used up."""
    queues = [split_names(dataset, split) for split in SPLITS]
    total = sum(map(len, queues))
    if not 1 <= count <= total:
        raise DataError(f"--tiles must be between 1 and {total} for {dataset} (the number of ISPRS tiles), got {count}")
    names = []
    while len(names) < count:
        names += [queue.pop(0) for queue in queues if queue][: count - len(names)]
    return names


def _synthetic_shape(dataset, k, size):
    """(height, width) of the k-th tile: Potsdam tiles are all square; Vaihingen tiles are `size` wide
    and 1 to 1.5 times as high, varying like the real ones (and mostly not multiples of 16)."""
    return (size, size) if dataset == "potsdam" else (size + size * (k % 5) // 8 + k % 3, size)


def synthesize(out_dir, dataset="vaihingen", tiles=6, size=1024, seed=0) -> None:
    """Write `tiles` synthetic tiles in the ISPRS layout; tile k is drawn from rng (seed, k)."""
    dataset = known_dataset(dataset)
    if size < 16 or seed < 0:
        raise DataError(f"--size must be at least 16 and --seed not negative, got size {size}, seed {seed}")
    out_dir, folders = Path(out_dir), _SYNTHETIC_FOLDERS[dataset]
    names = _synthetic_names(dataset, tiles)
    for k, name in enumerate(tqdm(names, desc="drawing", unit="tile", leave=False, disable=None)):
        height, width = _synthetic_shape(dataset, k, size)
        rng = np.random.default_rng((seed, k))
        rgir, ndsm, label = _render(_layout(rng, height, width), rng, height, width)
        path = {kind: out_dir / folder / file_name(dataset, kind, name) for kind, folder in folders.items()}
        for file in path.values():
            file.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path["image"], rgir, photometric="rgb")
        tifffile.imwrite(path["label"], labels_to_rgb(label), photometric="rgb", compression="zlib")
        tifffile.imwrite(path["eroded"], labels_to_rgb(_erode_boundaries(label)), photometric="rgb", compression="zlib")
        Image.fromarray(ndsm).save(path["ndsm"], quality=95)


# One's own data (own_data.py, --layout own): the same scenes as a survey that is not ISPRS. Four classes with
# label values of their own (cars are paved surface), clutter unlabelled; R, G, B, NIR in 12 bits stored as
# 16-bit integers; heights in float metres with a hole of nodata (OWN_NODATA) in every tile.
OWN_CLASSES = {"classes": [{"name": "paved", "value": 10}, {"name": "building", "value": 20, "colour": [90, 90, 90]},
                           {"name": "grass", "value": 30}, {"name": "tree", "value": 40}], "ignore": 255}
_OWN_VALUE = np.array([10, 20, 30, 40, 10, 255], np.uint8)  # of each ISPRS class id (_IMPERVIOUS, ...)
OWN_NODATA = -9999.0


def synthesize_own(out_dir, tiles=6, size=1024, seed=0) -> None:
    """Write `tiles` square synthetic tiles in the layout of one's own data (own_data.py), to DIR/{train,val,test}
    in turn, and its classes.json; tile k is drawn from rng (seed, k) as synthesize's."""
    if size < 16 or seed < 0:
        raise DataError(f"--size must be at least 16 and --seed not negative, got size {size}, seed {seed}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = ",\n".join(f"  {json.dumps(entry)}" for entry in OWN_CLASSES["classes"])
    (out_dir / "classes.json").write_text(f'{{"classes": [\n{classes}\n ],\n "ignore": {OWN_CLASSES["ignore"]}}}\n')
    nodata = [(GDAL_NODATA, "s", 0, f"{OWN_NODATA:g}", True)]
    for k in tqdm(range(tiles), desc="drawing", unit="tile", leave=False, disable=None):
        rng = np.random.default_rng((seed, k))
        irrg, ndsm, label = _render(_layout(rng, size, size), rng, size, size)
        infrared, red, green = np.moveaxis(irrg.astype(np.uint16), -1, 0)
        blue = (green * 3 + red) // 4  # roads and roofs stay grey, vegetation bluish dark
        bands = np.stack([red, green, blue, infrared], -1) * 16 + rng.integers(0, 16, (size, size, 4), np.uint16)
        metres = ndsm.astype(np.float32) / NDSM_LEVELS_PER_METRE
        y, x = rng.integers(0, size - size // 4, 2)
        metres[y : y + size // 4, x : x + size // 4] = OWN_NODATA  # a gap of the matching
        folder = out_dir / SPLITS[k % len(SPLITS)]
        for kind in ("image", "height", "label"):
            (folder / kind).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "image" / f"tile{k}.tif", bands, photometric="minisblack", planarconfig="contig",
                         compression="zlib")
        tifffile.imwrite(folder / "height" / f"tile{k}.tif", metres, compression="zlib", extratags=nodata)
        tifffile.imwrite(folder / "label" / f"tile{k}.tif", _OWN_VALUE[label], compression="zlib")


# ---- Command line ---------------------------------------------------------------------------


def main(argv=None):
    parser = ArgumentParser(description="Write synthetic tiles in the ISPRS Vaihingen or Potsdam layout, or in "
                                        "that of one's own data (--layout own), into DIR.")
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="where the tiles go")
    parser.add_argument("--dataset", choices=DATASETS, default="vaihingen",
                        help="with --layout isprs: whose file names, bands and pixel size (default %(default)s)")
    parser.add_argument("--layout", choices=("isprs", "own"), default="isprs",
                        help="isprs: the --dataset's files and folders; own: DIR/classes.json and DIR/{train,val,test}/"
                             "{image,height,label}, 4-band 16-bit images, float heights with nodata, 4 classes "
                             "(docs/data.md; default %(default)s)")
    parser.add_argument("--tiles", type=positive_int, default=6, help="number of tiles (train, val, test in turn)")
    parser.add_argument("--size", type=positive_int, default=1024, help="tile width (Vaihingen: 1-1.5x as high)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes: the same seed writes the same files (default %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.layout == "own":
        synthesize_own(args.out_dir, args.tiles, args.size, args.seed)
    else:
        synthesize(args.out_dir, args.dataset, args.tiles, args.size, args.seed)
    kind = "tiles of one's own data" if args.layout == "own" else f"{args.dataset} tiles"
    print(f"wrote {args.tiles} synthetic {kind} to {args.out_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    exit_on_user_error(main)
