"""The losses (losses.py) against independent computations and their properties."""

import math

import numpy as np
import pytest
import torch

from dis2 import DIS2, DIS2Config
from losses import (
    TERMS,
    cross_entropy,
    dice_loss,
    dis2_loss,
    feature_distillation_loss,
    logit_distillation_loss,
    median_frequency_weights,
    orthogonal_loss,
    segmentation_loss,
)

rng = np.random.default_rng(0)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


# ---------------------------------------------------------------------- Eq. 2


def test_orthogonal_loss_matches_a_loop():
    levels = [(rng.normal(size=(3, 5)), rng.normal(size=(3, 5))) for _ in range(4)]
    expected = 0.0
    for x, y in levels:
        expected += np.mean([(x[j] @ y[j] / (np.linalg.norm(x[j]) * np.linalg.norm(y[j]))) ** 2 for j in range(3)])
    got = orthogonal_loss([t(x) for x, _ in levels], [t(y) for _, y in levels])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_orthogonal_loss_is_zero_for_orthogonal_and_L_for_parallel_features():
    x = t([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    y = t([[0.0, 3.0, 0.0], [0.0, 0.0, -1.0]])
    assert orthogonal_loss([x] * 4, [y] * 4).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonal_loss([x] * 4, [-2.5 * x] * 4).item() == pytest.approx(4.0, rel=1e-6)


def test_orthogonal_loss_ignores_scale():
    x, y = t(rng.normal(size=(4, 8))), t(rng.normal(size=(4, 8)))
    scale = t(rng.uniform(0.1, 10, size=(4, 1)))
    assert orthogonal_loss([x * scale], [y * 7.0]).item() == pytest.approx(orthogonal_loss([x], [y]).item(), rel=1e-5)


def test_orthogonal_loss_rejects_unequal_levels():
    with pytest.raises(ValueError):
        orthogonal_loss([t(np.ones((2, 3)))] * 2, [t(np.ones((2, 3)))] * 3)


# ---------------------------------------------------------------------- Eq. 4


def test_feature_distillation_matches_numpy_and_stops_teacher_gradient():
    shapes = [(2, 8), (2, 16), (2, 3, 4, 4)]
    s_np = [rng.normal(size=s) for s in shapes]
    t_np = [rng.normal(size=s) for s in shapes]
    expected = sum(np.mean((a - b) ** 2) for a, b in zip(s_np, t_np))
    student = [t(a, grad=True) for a in s_np]
    teacher = [t(b, grad=True) for b in t_np]
    loss = feature_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(x.grad is not None for x in student)
    assert all(x.grad is None for x in teacher)
    # d/ds mean((s - t)^2) = 2 (s - t) / n
    np.testing.assert_allclose(student[2].grad.numpy(), 2 * (s_np[2] - t_np[2]) / s_np[2].size, rtol=1e-5)


def test_feature_distillation_is_zero_for_identical_features():
    x = [t(rng.normal(size=(2, 5)), grad=True)]
    assert feature_distillation_loss(x, [x[0].detach().clone()]).item() == 0.0


# ---------------------------------------------------------------------- Eq. 5


def softmax_np(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_logit_distillation_matches_numpy(T):
    zs, zt = rng.normal(size=(2, 6, 3, 5)), rng.normal(size=(2, 6, 3, 5))
    p_t, p_s = softmax_np(zt / T, 1), softmax_np(zs / T, 1)
    expected = T**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    student, teacher = t(zs, grad=True), t(zt, grad=True)
    loss = logit_distillation_loss(student, teacher, temperature=T)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert student.grad is not None and teacher.grad is None


def test_logit_distillation_is_zero_for_identical_logits_and_positive_otherwise():
    z = t(rng.normal(size=(1, 6, 4, 4)))
    assert logit_distillation_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_distillation_loss(z, z + t(rng.normal(size=(1, 6, 4, 4)))).item() > 0


def test_logit_distillation_ignores_a_constant_shift_of_the_logits():
    zs, zt = t(rng.normal(size=(2, 6, 3, 3))), t(rng.normal(size=(2, 6, 3, 3)))
    shifted = logit_distillation_loss(zs + 3.0, zt - 1.0).item()
    assert shifted == pytest.approx(logit_distillation_loss(zs, zt).item(), rel=1e-5)


# ---------------------------------------------------------------- L_seg (3.3)


def dice_np(logits, target, ignore=255, smooth=1.0):
    p = softmax_np(logits, 1)
    losses = []
    for b in range(len(target)):
        valid = target[b] != ignore
        dices = []
        for c in range(logits.shape[1]):
            pc = p[b, c][valid]
            yc = (target[b][valid] == c).astype(float)
            dices.append((2 * np.sum(pc * yc) + smooth) / (np.sum(pc) + np.sum(yc) + smooth))
        losses.append(1 - np.mean(dices))
    return np.mean(losses)


def ce_np(logits, target, weights, ignore=255):
    logp = np.log(softmax_np(logits, 1))
    per_image = []
    for b in range(len(target)):
        num = den = 0.0
        for y, x in zip(*np.nonzero(target[b] != ignore)):
            c = target[b, y, x]
            num += -weights[c] * logp[b, c, y, x]
            den += weights[c]
        per_image.append(num / den if den else 0.0)
    return np.mean(per_image)


def labelled_batch(ignore_fraction=0.2):
    logits = rng.normal(size=(2, 6, 5, 7)) * 2
    target = rng.integers(0, 6, size=(2, 5, 7))
    target[rng.random(size=target.shape) < ignore_fraction] = 255
    return logits, target


def test_dice_and_weighted_cross_entropy_match_loops():
    logits, target = labelled_batch()
    weights = rng.uniform(0.2, 3.0, size=6)
    z, y, w = t(logits), torch.tensor(target), t(weights)
    assert dice_loss(z, y).item() == pytest.approx(dice_np(logits, target), rel=1e-5)
    assert cross_entropy(z, y, w).item() == pytest.approx(ce_np(logits, target, weights), rel=1e-5)
    expected = ce_np(logits, target, weights) + dice_np(logits, target)
    assert segmentation_loss(z, y, w).item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(z, y).item() == pytest.approx(ce_np(logits, target, np.ones(6)) + dice_np(logits, target), rel=1e-5)


def test_ignored_pixels_do_not_change_the_segmentation_loss():
    logits, target = labelled_batch()
    ignored = target == 255
    changed = logits.copy()
    changed[np.broadcast_to(ignored[:, None], changed.shape)] = 50.0  # wild logits where the label is ignored
    y = torch.tensor(target)
    a = segmentation_loss(t(logits), y, t(np.linspace(0.5, 2, 6)))
    b = segmentation_loss(t(changed), y, t(np.linspace(0.5, 2, 6)))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_segmentation_loss_is_the_batch_mean_of_per_image_losses():
    """What makes a batch split over processes give the same gradient."""
    logits, target = labelled_batch()
    target[1] = 255  # an image with no labelled pixel contributes 0
    w = t(np.linspace(0.5, 2, 6))
    whole = segmentation_loss(t(logits), torch.tensor(target), w)
    halves = [segmentation_loss(t(logits[i : i + 1]), torch.tensor(target[i : i + 1]), w) for i in range(2)]
    assert whole.item() == pytest.approx(np.mean([h.item() for h in halves]), rel=1e-6)


def test_segmentation_loss_is_finite_when_every_pixel_is_ignored():
    logits = t(rng.normal(size=(1, 6, 4, 4)), grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = segmentation_loss(logits, target)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_loss_is_near_zero_for_a_confident_correct_prediction():
    target = torch.tensor(rng.integers(0, 6, size=(2, 8, 8)))
    logits = 50.0 * torch.nn.functional.one_hot(target, 6).permute(0, 3, 1, 2).float()
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=0.02)


def test_median_frequency_weights():
    w = median_frequency_weights([0.3, 0.2, 0.25, 0.2, 0.05, 0.0])
    np.testing.assert_allclose(w.numpy(), [0.2 / 0.3, 1.0, 0.8, 1.0, 4.0, 0.0], rtol=1e-6)
    # The median runs over the classes present: with three absent, over all six it would be 0.1.
    w = median_frequency_weights([0.5, 0.3, 0.2, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(w.numpy(), [0.6, 1.0, 1.5, 0.0, 0.0, 0.0], rtol=1e-6)


# --------------------------------------------------------- Eq. 14 (combined)


TINY = dict(width=4, embed_dim=16, heads=2, depth=1, class_width=2, pos_size=32)


def model_outputs(missing, train=True, **kwargs):
    torch.manual_seed(0)
    model = DIS2(DIS2Config(**TINY, **kwargs)).train(train)
    rgir, ndsm = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    target = torch.randint(0, 6, (2, 32, 32))
    out = model(rgir, ndsm, scenarios=("full", f"missing_{missing}"))
    return model, out["full"], out[f"missing_{missing}"], target


@pytest.mark.parametrize("missing", ["rgir", "ndsm"])
def test_combined_objective_is_the_sum_of_its_terms(missing):
    _, full, miss, target = model_outputs(missing)
    weights = torch.linspace(0.5, 2.0, 6)
    total, terms = dis2_loss(full, miss, target, missing, class_weights=weights)
    assert set(terms) == set(TERMS)
    available = "ndsm" if missing == "rgir" else "rgir"
    seg = lambda y: segmentation_loss(y, target, weights)
    expected = {
        "seg_full": seg(full.logits),
        "seg_miss": seg(miss.logits),
        "orth": orthogonal_loss(miss.branch_pooled[f"{available}_dist"], miss.branch_pooled[f"{available}_supp"]),
        "distill_feat": feature_distillation_loss([*miss.fused_pooled, miss.z], [*full.fused_pooled, full.z]),
        "distill_logit": logit_distillation_loss(miss.logits, full.logits),
        "uni_rgir": seg(full.uni_logits["rgir"]),
        "uni_ndsm": seg(full.uni_logits["ndsm"]),
        "aux": sum(seg(y) for y in [*full.aux_logits, *miss.aux_logits]),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert all(v.item() > 0 for v in terms.values())
    assert total.item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-5)


def test_without_dlkd_there_are_no_orthogonal_or_distillation_terms():
    _, full, miss, target = model_outputs("ndsm", dlkd=False)
    total, terms = dis2_loss(full, miss, target, "ndsm")
    assert terms["orth"].item() == terms["distill_feat"].item() == terms["distill_logit"].item() == 0.0
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)


def test_distillation_sends_no_gradient_to_the_full_scenario():
    """sg(.) in Eq. 4-5: the distillation terms train the missing path only
    (tests/test_model.py checks the same in train mode on a training batch)."""
    model, full, miss, target = model_outputs("rgir", train=False)
    _, terms = dis2_loss(full, miss, target, "rgir")
    assert not any(x.requires_grad for x in full.fused_pooled)  # the model computes the teacher's without gradient
    for x in (full.z, full.logits):
        x.retain_grad()
    (terms["distill_feat"] + terms["distill_logit"]).backward()
    assert all(x.grad is None for x in (full.z, full.logits))
    # The NDSM Supplement encoder is trained by distillation; RGIR_Dist (full path only) is not.
    assert model.encoders["ndsm_supp"].levels[0][0][0].weight.grad.abs().sum() > 0
    rgir_dist_grad = model.encoders["rgir_dist"].levels[0][0][0].weight.grad
    assert rgir_dist_grad is None or not rgir_dist_grad.any()
    assert math.isfinite(terms["distill_feat"].item())


# ----------------------------------------------------------- the authors' recipe


def test_authors_feature_distillation_is_the_mse_of_unit_vectors():
    """Their l2_kd_loss: pooled (B, D) vectors and Z (B, C, H, W) per pixel scaled to unit norm."""
    pooled_s, pooled_t = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    z_s, z_t = rng.normal(size=(2, 4, 3, 3)), rng.normal(size=(2, 4, 3, 3))
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    expected = np.mean((unit(pooled_s) - unit(pooled_t)) ** 2) + np.mean((unit(z_s) - unit(z_t)) ** 2)
    loss = feature_distillation_loss([t(pooled_s), t(z_s)], [t(pooled_t), t(z_t)], normalise=True)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # A rescaled student changes nothing once normalised.
    scaled = feature_distillation_loss([t(3 * pooled_s), t(0.5 * z_s)], [t(pooled_t), t(z_t)], normalise=True)
    assert scaled.item() == pytest.approx(expected, rel=1e-5)


def test_authors_logit_distillation_is_their_kl_div_mean():
    """F.kl_div(log q_miss, p_full, reduction="mean") * T^2, as their DLKD_ver4.py computes it: the
    paper's KL divided by the number of classes."""
    zs, zt, T = rng.normal(size=(2, 6, 3, 5)), rng.normal(size=(2, 6, 3, 5)), 2.0
    p_t, p_s = softmax_np(zt / T, 1), softmax_np(zs / T, 1)
    expected = T**2 * np.mean(p_t * (np.log(p_t) - np.log(p_s)))  # the mean over every element
    loss = logit_distillation_loss(t(zs), t(zt), temperature=T, class_mean=True)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(logit_distillation_loss(t(zs), t(zt), temperature=T).item() / 6, rel=1e-5)


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_authors_recipe_puts_the_pieces_together(weight):
    """Orthogonal loss on the first 3 levels, normalised feature and class-mean logit
    distillation, the distillation weighted; everything else as the paper's recipe."""
    _, full, miss, target = model_outputs("rgir")
    total, terms = dis2_loss(full, miss, target, "rgir", recipe="authors", distill_weight=weight)
    _, paper = dis2_loss(full, miss, target, "rgir")
    dist, supp = miss.branch_pooled["ndsm_dist"], miss.branch_pooled["ndsm_supp"]
    cos2 = lambda a, b: np.mean((np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) ** 2)
    expected_orth = sum(cos2(a.detach().numpy(), b.detach().numpy()) for a, b in zip(dist[:3], supp[:3]))
    assert len(dist) == 4 and terms["orth"].item() == pytest.approx(expected_orth, rel=1e-5)
    assert terms["distill_feat"].item() == pytest.approx(feature_distillation_loss(
        [*miss.fused_pooled, miss.z], [*full.fused_pooled, full.z], normalise=True).item(), rel=1e-5)
    assert terms["distill_logit"].item() == pytest.approx(paper["distill_logit"].item() / 6, rel=1e-5)
    for name in ("seg_full", "seg_miss", "uni_rgir", "uni_ndsm", "aux"):
        assert terms[name].item() == pytest.approx(paper[name].item(), rel=1e-6), name
    others = sum(terms[n].item() for n in ("seg_full", "seg_miss", "orth", "uni_rgir", "uni_ndsm", "aux"))
    distill = terms["distill_feat"].item() + terms["distill_logit"].item()
    assert total.item() == pytest.approx(others + weight * distill, rel=1e-5)
    with pytest.raises(ValueError, match="recipe must be one of"):
        dis2_loss(full, miss, target, "rgir", recipe="theirs")
