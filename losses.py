r"""
The losses of DIS2 (paper Sections 3.1 and 3.3), as plain functions.

Eq. 14: $\begin{array}{l} \mathcal{L} = \mathcal{L}_{\mathrm{seg}}(\hat{\mathbf{Y}}^{\mathrm{full}},
\mathbf{Y}) + \mathcal{L}_{\mathrm{seg}}(\hat{\mathbf{Y}}^{\mathrm{miss}}, \mathbf{Y}) \\ \quad +
\mathcal{L}_{\mathrm{DLKD}} + \sum_m \mathcal{L}_{\mathrm{uni}}^m + \mathcal{L}_{\mathrm{aux}}
\end{array}$

Eq. 2-6: $\mathcal{L}_{\mathrm{DLKD}} = \mathcal{L}_{\mathrm{orth}} +
\mathcal{L}_{\mathrm{distill}}^{\mathrm{feat}} + \mathcal{L}_{\mathrm{distill}}^{\mathrm{logit}}$

`dis2_loss` puts them together for one batch, given the model's outputs for the full scenario and
for the missing scenario drawn for that batch.
"""

import torch
import torch.nn.functional as F

from dis2 import OTHER

IGNORE_INDEX = 255
TERMS = ("seg_full", "seg_miss", "orth", "distill_feat", "distill_logit", "uni_rgir", "uni_ndsm",
         "aux")
# "paper": Eq. 2-6 and 14 as printed. "authors": DLKD as the authors' code computes it
# (DLKD_ver4.py, run_experiment_35.py): the orthogonal loss on the first 3 levels, feature
# distillation on L2-normalised features (their l2_kd_loss), the KL of Eq. 5 averaged over the
# classes too (F.kl_div(..., reduction="mean")), and distillation weighted by the training loop
# (train.distill_weight: 5, and 0 early on). Only DLKD's strength differs between the two.
RECIPES = ("paper", "authors")
AUTHORS_ORTH_LEVELS = 3


def at_least_fp32(x):
    """x in float32 where autocast left it in fp16 or bf16; float32 and float64
    stay as they are (a model in float64 computes its losses in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def orthogonal_loss(dist, supp):
    """Eq. 2, for one modality: `dist` and `supp` are equal-length sequences (one entry per level)
    of pooled Distinct and Supplement features (B, D). The cosine is taken on the raw features, so
    scaling either changes nothing."""
    if len(dist) != len(supp):
        raise ValueError("orthogonal_loss needs one Supplement feature per Distinct feature, "
                         f"got {len(dist)} and {len(supp)}")
    # Eq. 2: $\mathcal{L}_{\mathrm{orth}} = \sum_{i=1}^{L} \frac{1}{N} \sum_{j=1}^{N}
    #   \left(\frac{\mathbf{x}_{ij}^m \cdot \mathbf{x}'^m_{ij}}
    #   {\|\mathbf{x}_{ij}^m\|_2 \|\mathbf{x}'^m_{ij}\|_2}\right)^2$
    return sum(F.cosine_similarity(at_least_fp32(x), at_least_fp32(x_supp), dim=1).pow(2).mean()
               for x, x_supp in zip(dist, supp))


def feature_distillation_loss(student, teacher, normalise=False):
    r"""Eq. 4: mean squared error between the missing-scenario (student) and the stop-gradient
    full-scenario (teacher) features, summed over the terms (pooled $\mathbf{F}_1, \dots,
    \mathbf{F}_L$ and the penultimate $\mathbf{Z}$). With `normalise` (the authors' recipe, their
    l2_kd_loss), each feature vector is first scaled to unit L2 norm over its channels: a pooled (B,
    D) per sample, Z (B, C, H, W) per pixel."""
    if len(student) != len(teacher):
        raise ValueError("feature_distillation_loss needs matching sequences, "
                         f"got {len(student)} and {len(teacher)}")
    unit = (lambda x: F.normalize(x, p=2, dim=1, eps=1e-6)) if normalise else (lambda x: x)
    # Eq. 4: $\mathcal{L}_{\mathrm{distill}}^{\mathrm{feat}} = \sum_{i=1}^{L}
    #   \|\mathbf{F}_i^{\mathrm{miss}} - \mathrm{sg}(\mathbf{F}_i^{\mathrm{full}})\|_2^2
    #   + \|\mathbf{Z}^{\mathrm{miss}} - \mathrm{sg}(\mathbf{Z}^{\mathrm{full}})\|_2^2$
    return sum(F.mse_loss(unit(at_least_fp32(s)), unit(at_least_fp32(t.detach())))
               for s, t in zip(student, teacher))


def logit_distillation_loss(student_logits, teacher_logits, temperature=2.0, class_mean=False):
    """Eq. 5: KL divergence from the temperature-softened teacher (full scenario) to the student
    (missing scenario), summed over classes and averaged over batch and pixels. The $T^2$ keeps the
    gradient scale independent of T (Hinton et al.). With `class_mean` (the authors' recipe) the sum
    over the classes becomes a mean: K times smaller."""
    T = temperature
    log_p_student = F.log_softmax(at_least_fp32(student_logits) / T, dim=1)
    log_p_teacher = F.log_softmax(at_least_fp32(teacher_logits.detach()) / T, dim=1)
    # Eq. 5: $\mathcal{L}_{\mathrm{distill}}^{\mathrm{logit}} = T^2 \times \mathrm{KL}\left(
    #   \mathrm{soft}\left(\frac{\mathbf{z}^{\mathrm{full}}}{T}\right) \,\middle\|\,
    #   \mathrm{log\_soft}\left(\frac{\mathbf{z}^{\mathrm{miss}}}{T}\right)\right)$
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none")
    kl = kl.mean(dim=1) if class_mean else kl.sum(dim=1)
    return T**2 * kl.mean()


def labelled(target, ignore_index):
    """(target with ignored pixels set to class 0, mask of the labelled pixels)."""
    valid = target != ignore_index
    return torch.where(valid, target, 0), valid


def dice_from_log_probs(log_probs, target, valid, smooth=1.0):
    """Soft Dice loss of (B, K, H, W) log-probabilities; see dice_loss."""
    probs = log_probs.exp() * valid.unsqueeze(1)  # (B, K, H, W), 0 where ignored
    B, K = probs.shape[:2]
    index = target.flatten(1)  # (B, HW)
    # $\sum_{\mathrm{pixels}} p_c [y = c]$: each pixel's probability of its own class, per class
    own = probs.gather(1, target.unsqueeze(1)).flatten(1)
    intersection = own.new_zeros(B, K).scatter_add(1, index, own)
    counts = own.new_zeros(B, K).scatter_add(1, index, valid.flatten(1).to(own.dtype))
    dice = (2 * intersection + smooth) / (probs.sum((2, 3)) + counts + smooth)  # (B, K)
    return (1 - dice.mean(dim=1)).mean()


def cross_entropy_from_log_probs(log_probs, target, valid, class_weights=None):
    """Weighted cross entropy of (B, K, H, W) log-probabilities; see cross_entropy."""
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, H, W)
    weights = class_weights[target] * valid if class_weights is not None else valid.to(nll.dtype)
    per_image = ((weights * nll).sum((1, 2))
                 / weights.sum((1, 2)).clamp_min(torch.finfo(nll.dtype).tiny))
    return per_image.mean()


def dice_loss(logits, target, ignore_index=IGNORE_INDEX, smooth=1.0):
    r"""Soft multi-class Dice loss per image, $1 - \mathrm{mean}_c \mathrm{Dice}_c$, with the Dice
    of class c over the image's pixels that are not `ignore_index`; averaged over the batch."""
    return dice_from_log_probs(F.log_softmax(at_least_fp32(logits), dim=1),
                               *labelled(target, ignore_index), smooth)


def cross_entropy(logits, target, class_weights=None, ignore_index=IGNORE_INDEX):
    """Class-weighted cross entropy per image, the weighted mean over its pixels that are not
    `ignore_index` (0 when all are); averaged over the batch."""
    return cross_entropy_from_log_probs(F.log_softmax(at_least_fp32(logits), dim=1),
                                        *labelled(target, ignore_index), class_weights)


def segmentation_loss(logits, target, class_weights=None, ignore_index=IGNORE_INDEX):
    r"""$\mathcal{L}_{\mathrm{seg}}$ of Section 3.3: weighted cross entropy plus Dice, from one
    log-softmax. Both are taken per image and averaged over the batch, like every loss here, so a
    batch split over several processes (torchrun) gives the same gradient."""
    log_probs = F.log_softmax(at_least_fp32(logits), dim=1)
    target, valid = labelled(target, ignore_index)
    return (cross_entropy_from_log_probs(log_probs, target, valid, class_weights)
            + dice_from_log_probs(log_probs, target, valid))


def median_frequency_weights(frequencies):
    r"""Class weights for the weighted cross entropy: median frequency balancing (Eigen and Fergus,
    2015), $w_c = \frac{\mathrm{median}_c(f_c)}{f_c}$, where $f_c$ is the fraction of labelled
    training pixels of class c; a class that never occurs gets weight 0. The paper says "weighted"
    but not how; this is the usual choice for the ISPRS data, where cars are about 1% of the pixels.
    """
    f = torch.as_tensor(frequencies, dtype=torch.float32)
    present = f > 0
    weights = torch.zeros_like(f)
    weights[present] = f[present].median() / f[present]
    return weights


def dis2_loss(full, miss, target, missing, class_weights=None, temperature=2.0, recipe="paper",
              distill_weight=1.0):
    r"""The combined objective of Eq. 14 for one batch: `full` and `miss` are the DIS2Output of the
    full scenario and of the missing scenario (`missing` is "rgir" or "ndsm"). Returns the total and
    a dict of every term, unweighted (a variant without DLKD has no orthogonal or distillation
    terms: they are 0). `recipe` "authors" computes DLKD as the authors' code does (RECIPES), and
    `distill_weight` multiplies $\mathcal{L}_{\mathrm{distill}}$ (Eq. 14 as printed: 1)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    authors = recipe == "authors"
    seg = lambda logits: segmentation_loss(logits, target, class_weights)
    available = OTHER[missing]
    zero = at_least_fp32(full.logits.new_zeros(()))
    terms = dict(seg_full=seg(full.logits), seg_miss=seg(miss.logits), orth=zero, distill_feat=zero,
                 distill_logit=zero)
    if miss.branch_pooled:
        levels = slice(AUTHORS_ORTH_LEVELS) if authors else slice(None)
        terms["orth"] = orthogonal_loss(miss.branch_pooled[f"{available}_dist"][levels],
                                        miss.branch_pooled[f"{available}_supp"][levels])
        terms["distill_feat"] = feature_distillation_loss(
            [*miss.fused_pooled, miss.z], [*full.fused_pooled, full.z], normalise=authors)
        terms["distill_logit"] = logit_distillation_loss(miss.logits, full.logits, temperature,
                                                         class_mean=authors)
    terms["uni_rgir"] = seg(full.uni_logits["rgir"])
    terms["uni_ndsm"] = seg(full.uni_logits["ndsm"])
    # Eq. 13: $\mathcal{L}_{\mathrm{aux}} = \sum_{l=1}^{L}
    #   \mathcal{L}_{\mathrm{seg}}(\hat{\mathbf{Y}}^l, \mathbf{Y})$, for the decoder levels of both
    #   scenarios
    terms["aux"] = sum(seg(y) for out in (full, miss) for y in out.aux_logits)
    # Eq. 3: $\mathcal{L}_{\mathrm{distill}} = \mathcal{L}_{\mathrm{distill}}^{\mathrm{feat}}
    #   + \mathcal{L}_{\mathrm{distill}}^{\mathrm{logit}}$, weighted 1 in Eq. 14
    # (the authors' loop: 5, or 0 early on)
    distill = distill_weight * (terms["distill_feat"] + terms["distill_logit"])
    # Eq. 6: $\mathcal{L}_{\mathrm{DLKD}} = \mathcal{L}_{\mathrm{orth}}
    #   + \mathcal{L}_{\mathrm{distill}}$
    dlkd = terms["orth"] + distill
    # Eq. 14: $\begin{array}{l} \mathcal{L} =
    #   \mathcal{L}_{\mathrm{seg}}(\hat{\mathbf{Y}}^{\mathrm{full}}, \mathbf{Y})
    #   + \mathcal{L}_{\mathrm{seg}}(\hat{\mathbf{Y}}^{\mathrm{miss}}, \mathbf{Y}) \\ \quad
    #   + \mathcal{L}_{\mathrm{DLKD}} + \sum_m \mathcal{L}_{\mathrm{uni}}^m
    #   + \mathcal{L}_{\mathrm{aux}} \end{array}$
    total = (terms["seg_full"] + terms["seg_miss"] + dlkd + terms["uni_rgir"] + terms["uni_ndsm"]
             + terms["aux"])
    return total, terms
