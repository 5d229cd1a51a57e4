"""
The reproduction's figures, as PNG (Pillow, no plotting package): Figure 3
(predictions of HF and DIS2 in the three scenarios), Figure 4 (the class
queries q_k and what they retrieve), Figure 6 (the classwise attention alpha_k)
and the training-loss curves. reproduce.py draws them.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw

import data
from data import CLASSES
from dis2 import SCENARIOS
from evaluate import SHORT_NAMES

VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def colormap(values):
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 on a viridis-like ramp."""
    x = np.clip(values, 0, 1) * (len(VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(VIRIDIS) - 2)
    f = (x - i)[..., None]
    return ((1 - f) * VIRIDIS[i] + f * VIRIDIS[i + 1]).astype(np.uint8)


def stretch(x):
    x = x.astype(np.float32)
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-8)


def show_ndsm(ndsm):
    return np.repeat((255 * np.clip(ndsm / max(np.percentile(ndsm, 99.5), 1), 0, 1)).astype(np.uint8)[..., None], 3, -1)


def grid_image(cells, row_labels, column_labels, cell):
    """Pastes (H, W, 3) uint8 arrays, resized to `cell` pixels high, into a labelled grid."""
    resized = [[Image.fromarray(c).resize((round(cell * c.shape[1] / c.shape[0]), cell), Image.NEAREST) for c in row]
               for row in cells]
    widths = [max(row[j].width for row in resized) for j in range(len(resized[0]))]
    left, top, gap = 150, 28, 6
    image = Image.new("RGB", (left + sum(widths) + gap * len(widths), top + (cell + gap) * len(resized)), "white")
    draw = ImageDraw.Draw(image)
    x = left
    for j, label in enumerate(column_labels):
        draw.text((x, 8), label, fill="black")
        for i, row in enumerate(resized):
            image.paste(row[j], (x, top + i * (cell + gap)))
        x += widths[j] + gap
    for i, label in enumerate(row_labels):
        draw.text((6, top + i * (cell + gap) + cell // 2 - 6), label, fill="black")
    return image


def figure_predictions(tiles, predictions, path, cell=200):
    """Figure 3 analogue: per tile, IRRG, NDSM, reference and the predictions of
    each variant in each scenario. `predictions`: variant -> scenario -> tile name -> map."""
    columns, rows = ["IRRG (false colour)", "NDSM", "reference"], []
    for variant in predictions:
        columns += [f"{variant.upper()} {s.replace('missing_', 'no ')}" for s in SCENARIOS]
    for tile in tiles:
        row = [tile.rgir, show_ndsm(tile.ndsm), data.labels_to_rgb(tile.label)]
        row += [data.labels_to_rgb(predictions[v][s][tile.name]) for v in predictions for s in SCENARIOS]
        rows.append(row)
    grid_image(rows, [t.name for t in tiles], columns, cell).save(path)


# One colour per variant of the reproduction (the ten of matplotlib's tab10).
LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LOSS_PLOT_MARGINS = (60, 200, 20, 40)  # left, right (the legend), top, bottom (the axis title), in pixels


def figure_training_loss(curves, path, size=(760, 420)):
    """The training segmentation loss against the step, one colour per
    variant and one line per seed. `curves`: variant -> seed -> [(step, loss)]."""
    W, H = size
    left, right, top, bottom = LOSS_PLOT_MARGINS
    points = [p for runs in curves.values() for curve in runs.values() for p in curve]
    max_step = max(s for s, _ in points)
    low, high = min(l for _, l in points), max(l for _, l in points)
    high = high if high > low else low + 1
    to_xy = lambda s, l: (left + (W - left - right) * s / max_step, top + (H - top - bottom) * (high - l) / (high - low))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for frac in (0, 0.5, 1):
        loss = low + frac * (high - low)
        draw.text((4, to_xy(0, loss)[1] - 6), f"{loss:.3f}", fill="black")
        draw.text((to_xy(frac * max_step, low)[0] - 10, H - bottom + 6), f"{round(frac * max_step)}", fill="black")
    draw.text((left + 4, H - 16), "training step; y: L_seg(full) + L_seg(missing), per epoch", fill="black")
    for i, (variant, runs) in enumerate(curves.items()):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        for curve in runs.values():
            if len(curve) > 1:
                draw.line([to_xy(s, l) for s, l in curve], fill=colour, width=2)
            else:
                x, y = to_xy(*curve[0])
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((W - right + 10, top + 16 * i), f"{variant} ({len(runs)})", fill=colour)
    image.save(path)


@torch.inference_mode()
def attention_and_queries(model, tile, window, device):
    """alpha_k (K, h, w) and the class descriptors sum_p alpha_k(p) F_L(p) (K, C)
    of each scenario, for the top-left window of a tile."""
    r, n = data.normalise(data.pad_to_window(tile.rgir, window)[None, :window, :window],
                          data.pad_to_window(tile.ndsm, window)[None, :window, :window])
    captured = []  # M of each scenario, in the order the scenarios run
    hooks = [stack.classwise_attention.register_forward_hook(lambda module, inputs, output: captured.append(output[0]))
             for stack in model.fusion_decoders.values()]
    outputs = model.eval()(r.to(device), n.to(device), scenarios=list(SCENARIOS))
    for hook in hooks:
        hook.remove()
    K, C = model.config.num_classes, model.config.widths[-1]
    m = [x.view(K, C, -1).mean(-1) for x in captured]  # mean_p of M_k = h w alpha_k F_L: sum_p alpha_k F_L
    return {s: (outputs[s].attention[0].float().cpu().numpy(), m[i].float().cpu().numpy()) for i, s in enumerate(SCENARIOS)}


def figure_attention(model, tile, window, device, path, cell=160):
    """Figure 6 analogue: the classwise attention maps alpha_k of each scenario over the input window."""
    maps = attention_and_queries(model, tile, window, device)
    rgir = data.pad_to_window(tile.rgir, window)[:window, :window]
    rows = []
    for s in SCENARIOS:
        row = [rgir]
        for alpha in maps[s][0]:
            heat = np.asarray(Image.fromarray(colormap(stretch(alpha))).resize((window, window), Image.BILINEAR))
            row.append((0.55 * heat + 0.45 * rgir).astype(np.uint8))
        rows.append(row)
    columns = ["IRRG", *(c.replace("_", " ") for c in CLASSES)]
    grid_image(rows, [SHORT_NAMES[s] for s in SCENARIOS], columns, cell).save(path)


def figure_queries(model, tile, window, device, path, cell=150):
    """Figure 4 analogue: the learnable class queries q_k of Eq. 9 (one set
    shared by all scenarios, or one per scenario in the per-scenario layout)
    and, per scenario, what they retrieve from F_L, sum_p alpha_k(p) F_L(p):
    a (K, C) heatmap each, one row per class."""
    maps = attention_and_queries(model, tile, window, device)
    queries = {name: stack.classwise_attention.queries.detach().float().cpu().numpy()
               for name, stack in model.fusion_decoders.items()}
    heat = lambda x: np.repeat(np.repeat(colormap(stretch(x)), 24, axis=0), 2, axis=1)
    cells = [[*(heat(q) for q in queries.values()), *(heat(maps[s][1]) for s in SCENARIOS)]]
    columns = [f"queries q_k{'' if name == 'shared' else ', ' + SHORT_NAMES[name]}" for name in queries]
    columns += [f"retrieved, {SHORT_NAMES[s]}" for s in SCENARIOS]
    grid_image(cells, ["classes 1-6 (rows)"], columns, cell).save(path)
