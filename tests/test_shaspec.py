"""ShaSpec, the comparison method of Table 1 (shaspec.py): shapes, slots,
residual fusion, running statistics, loss terms, gradients, overfitting."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dis2 import ABLATIONS, DIS2, DIS2Config, ScenarioBatchNorm2d
from losses import segmentation_loss
from runtime import config_dict
from shaspec import SHASPEC_TERMS, ShaSpec, ShaSpecConfig, ShaSpecOutput, shaspec_loss
from test_model import assert_missing_input_ignored_in_train_mode, assert_missing_input_unseen, overfit_one_batch

TINY = dict(width=4, embed_dim=16, heads=2, depth=1, class_width=2, pos_size=32)
SCENARIOS = {"full": (True, True), "missing_rgir": (False, True), "missing_ndsm": (True, False)}


def inputs(B=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g), torch.randn(B, 1, size, size, generator=g)


def target(B=2, size=32, seed=1):
    return torch.randint(0, 6, (B, size, size), generator=torch.Generator().manual_seed(seed))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ShaSpec(ShaSpecConfig(**TINY))


def capture_slots(model):
    """scenario -> (slot a, slot b) as the fusion receives them, from the next calls."""
    slots = {}
    model.fusion_decoder.register_forward_pre_hook(lambda module, args: slots.__setitem__(args[2], args[:2]))
    return slots


def scenario_output(out):
    """Every tensor a scenario's output holds, flattened, for comparisons."""
    tensors = [out.logits, out.z, *out.aux_logits, *out.specific_pooled.values(), *out.domain_logits.values()]
    return tensors + [x for xs in out.shared.values() for x in xs]


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_output_shapes_every_scenario(scenario):
    model = tiny_model()
    use_rgir, use_ndsm = SCENARIOS[scenario]
    rgir, ndsm = inputs()
    out = model(rgir if use_rgir else None, ndsm if use_ndsm else None)
    available = [m for m, used in zip(("rgir", "ndsm"), SCENARIOS[scenario]) if used]
    assert out.logits.shape == (2, 6, 32, 32)
    assert out.z.shape == (2, 4, 32, 32)
    assert [y.shape for y in out.aux_logits] == [(2, 6, 32, 32)] * 4
    assert out.attention is None
    assert list(out.shared) == list(out.specific_pooled) == list(out.domain_logits) == available
    for m in available:
        assert [r.shape for r in out.shared[m]] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]
        assert out.specific_pooled[m].shape == (2, 32)
        assert out.domain_logits[m].shape == (2, 2)


def test_config_is_hf_at_the_same_sizes():
    """Fusion and decoder are exactly HF's: the same modules and shapes as
    DIS2's HF variant, whose DIS2Config fills the defaults."""
    config = ShaSpecConfig()
    assert not config.classwise
    assert (config.widths, config.embed_dim, config.class_width, config.z_channels) == ((32, 64, 128, 256), 256, 16, 32)
    assert config.fusion_decoder_config() == DIS2Config(**ABLATIONS["hf"])
    assert ShaSpecConfig(**config_dict(config)) == config  # a checkpoint's config round trip
    hf = DIS2(DIS2Config(**TINY, **ABLATIONS["hf"])).fusion_decoders["shared"].state_dict()
    ours = tiny_model().fusion_decoder.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in hf.items()}


def test_scenarios_share_one_run_of_each_encoder():
    model = tiny_model()
    calls = []
    model.shared_encoder.register_forward_hook(lambda module, args, output: calls.append(("shared", args[1])))
    for m, encoder in model.specific_encoders.items():
        encoder.register_forward_hook(lambda *_, m=m: calls.append(("specific", m)))
    out = model(*inputs(), scenarios=("full", "missing_rgir", "missing_ndsm"))
    assert sorted(calls) == [("shared", "ndsm"), ("shared", "rgir"), ("specific", "ndsm"), ("specific", "rgir")]
    assert list(out) == ["full", "missing_rgir", "missing_ndsm"]


def test_scenarios_equal_the_separate_calls():
    model = tiny_model().eval()
    rgir, ndsm = inputs()
    out = model(rgir, ndsm, scenarios=("full", "missing_rgir", "missing_ndsm"))
    torch.testing.assert_close(out["full"].logits, model(rgir, ndsm).logits)
    torch.testing.assert_close(out["missing_rgir"].logits, model(None, ndsm).logits)
    torch.testing.assert_close(out["missing_ndsm"].logits, model(rgir, None).logits)


@pytest.mark.parametrize(
    "rgir_shape, ndsm_shape, message",
    [
        (None, None, "at least one modality"),
        ((2, 4, 32, 32), (2, 1, 32, 32), r"rgir must have shape \(B, 3, H, W\)"),
        ((2, 3, 32, 32), (2, 3, 32, 32), r"ndsm must have shape \(B, 1, H, W\)"),
        ((2, 3, 30, 32), None, "multiples of 16"),
        ((2, 3, 32, 32), (2, 1, 16, 32), "must match"),
    ],
)
def test_bad_inputs_raise_value_error(rgir_shape, ndsm_shape, message):
    model = tiny_model()
    rgir = torch.randn(rgir_shape) if rgir_shape else None
    ndsm = torch.randn(ndsm_shape) if ndsm_shape else None
    with pytest.raises(ValueError, match=message):
        model(rgir, ndsm)


def test_scenarios_need_known_names_and_both_modalities():
    model = tiny_model()
    rgir, ndsm = inputs()
    with pytest.raises(ValueError, match="scenarios must be names from"):
        model(rgir, ndsm, scenarios=("full", "missing_dsm"))
    with pytest.raises(ValueError, match="need both rgir and ndsm"):
        model(rgir, None, scenarios=("missing_ndsm",))


# --------------------------------------------------- slots and residual fusion


def test_missing_slot_holds_the_available_modalitys_shared_features():
    model = tiny_model().eval()
    slots = capture_slots(model)
    out = model(*inputs(), scenarios=("full", "missing_rgir", "missing_ndsm"))
    full_a, full_b = slots["full"]
    # RGIR missing: slot a (RGIR) holds r_ndsm, slot b NDSM's composed features, as in the full scenario.
    a, b = slots["missing_rgir"]
    assert all(torch.equal(x, r) for x, r in zip(a, out["missing_rgir"].shared["ndsm"]))
    assert all(torch.equal(x, f) for x, f in zip(b, full_b))
    # NDSM missing: slot b holds r_rgir.
    a, b = slots["missing_ndsm"]
    assert all(torch.equal(x, f) for x, f in zip(a, full_a))
    assert all(torch.equal(x, r) for x, r in zip(b, out["missing_ndsm"].shared["rgir"]))
    # An available modality's slot is composed, not its bare shared features.
    assert not torch.allclose(full_a[0], out["full"].shared["rgir"][0])


def test_composition_is_residual():
    model = tiny_model().eval()
    slots = capture_slots(model)
    rgir, ndsm = inputs()
    # f = r + f_proj([r, s]), against an independent convolution
    compose = model.composition[0]
    r, s = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    expected = r + F.conv2d(torch.cat([r, s], dim=1), compose.project.weight, padding=1)
    torch.testing.assert_close(compose(r, s), expected)
    # f_proj = 0 at every level: f_m = r_m, so the full scenario's slots are the shared features.
    with torch.no_grad():
        for compose in model.composition:
            compose.project.weight.zero_()
    out = model(rgir, ndsm)
    for slot, m in zip(slots["full"], ("rgir", "ndsm")):
        assert all(torch.equal(f, r) for f, r in zip(slot, out.shared[m]))


# -------------------------------------------- shared weights, per-modality statistics


def test_shared_encoder_serves_both_modalities_with_their_own_statistics():
    model = tiny_model().train()
    with torch.no_grad():
        model(*inputs(), scenarios=("full", "missing_rgir"))
    norms = [m for m in model.shared_encoder.encoder.modules() if isinstance(m, ScenarioBatchNorm2d)]
    assert len(norms) == 8  # every batch norm of the 4 levels, none left plain
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.shared_encoder.modules())
    assert not torch.equal(norms[0].running_mean_rgir, norms[0].running_mean_ndsm)
    assert [tuple(stem.weight.shape) for stem in model.shared_encoder.stems.values()] == [(3, 3, 1, 1), (3, 1, 1, 1)]


@pytest.mark.parametrize("missing", ("rgir", "ndsm"))
def test_missing_scenario_in_training_ignores_the_missing_modality(missing):
    """In train mode, as train.py runs it (full and missing scenario from one
    call, batch norm on batch statistics): changing only the missing
    modality's pixels leaves every output of the missing scenario unchanged."""
    model = tiny_model().train()
    rgir, ndsm = inputs()
    assert_missing_input_ignored_in_train_mode(model, rgir, ndsm, missing, scenario_output)


@pytest.mark.parametrize("missing", ("rgir", "ndsm"))
def test_missing_scenario_at_evaluation_ignores_the_missing_modality_seen_in_training(missing):
    """Two models that trained (train-mode passes) on batches differing only
    in the missing modality give bit-identical outputs in that scenario in
    eval mode: the running statistics it uses, in the shared encoder and
    after it, come from the available modality and its own scenario only."""
    first = tiny_model()
    rgir, ndsm = inputs()
    assert_missing_input_unseen(first, rgir, ndsm, missing, scenario_output)


# ---------------------------------------------------------------- the objective


def fake_output(rng, modalities, B=2, K=3, size=4, levels=((3, 4), (5, 2))):
    """A ShaSpecOutput of small random tensors: levels are (channels, side)."""
    t = lambda *shape: torch.tensor(rng.normal(size=shape), dtype=torch.float32)
    return ShaSpecOutput(
        logits=t(B, K, size, size), z=t(B, 2, size, size), aux_logits=[t(B, K, size, size) for _ in range(2)],
        attention=None, shared={m: [t(B, c, s, s) for c, s in levels] for m in modalities},
        specific_pooled={m: t(B, 5) for m in modalities}, domain_logits={m: t(B, 2) for m in modalities},
    )


def test_loss_terms_match_independent_computations():
    rng = np.random.default_rng(0)
    full, miss = fake_output(rng, ("rgir", "ndsm")), fake_output(rng, ("ndsm",))
    labels = torch.tensor(rng.integers(0, 3, size=(2, 4, 4)))
    weights = torch.tensor([0.5, 1.0, 2.0])
    total, terms = shaspec_loss(full, miss, labels, "rgir", weights, alpha=0.3, beta=0.7)
    assert tuple(terms) == SHASPEC_TERMS
    seg = lambda logits: segmentation_loss(logits, labels, weights).item()
    assert terms["seg_full"].item() == pytest.approx(seg(full.logits))
    assert terms["seg_miss"].item() == pytest.approx(seg(miss.logits))
    assert terms["aux"].item() == pytest.approx(sum(seg(y) for out in (full, miss) for y in out.aux_logits))
    # DAO: mean absolute difference per level, averaged over the levels
    a, b = ([x.numpy() for x in full.shared[m]] for m in ("rgir", "ndsm"))
    align = np.mean([np.abs(x - y).mean() for x, y in zip(a, b)])
    assert terms["align"].item() == pytest.approx(align, rel=1e-6)
    # DCO: class 0 for the RGIR samples, class 1 for the NDSM samples
    nll = [np.log(np.exp(z).sum()) - z[label] for label, m in enumerate(("rgir", "ndsm"))
           for z in full.domain_logits[m].numpy()]
    assert terms["domain"].item() == pytest.approx(np.mean(nll), rel=1e-6)
    expected = seg(full.logits) + seg(miss.logits) + terms["aux"].item() + 0.3 * align + 0.7 * np.mean(nll)
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_the_authors_alignment_is_the_cyclic_sum_at_the_bottleneck():
    """train_SS.py's DAO: L1(r^0, r^1) + L1(r^1, r^0) at the bottleneck for two modalities, twice the
    bottleneck's L1, whatever the other levels hold; the levels' form weighs the bottleneck 1/L."""
    rng = np.random.default_rng(0)
    full, miss = fake_output(rng, ("rgir", "ndsm")), fake_output(rng, ("ndsm",))
    labels = torch.tensor(rng.integers(0, 3, size=(2, 4, 4)))
    _, levels = shaspec_loss(full, miss, labels, "rgir", alignment="levels")
    total, authors = shaspec_loss(full, miss, labels, "rgir", alignment="authors")
    a, b = (full.shared[m][-1].numpy() for m in ("rgir", "ndsm"))
    assert authors["align"].item() == pytest.approx(2 * np.abs(a - b).mean(), rel=1e-6)
    assert authors["align"].item() != pytest.approx(levels["align"].item(), rel=1e-3)
    for m in ("rgir", "ndsm"):
        full.shared[m][0] += 5.0  # level 1 of one modality only: the authors' form does not see it
    assert shaspec_loss(full, miss, labels, "rgir", alignment="authors")[1]["align"] == authors["align"]
    assert total.item() == pytest.approx(sum(v.item() for k, v in authors.items() if k not in ("align", "domain"))
                                         + 0.1 * authors["align"].item() + 0.02 * authors["domain"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="alignment must be one of"):
        ShaSpecConfig(alignment="pairs")


def test_loss_defaults_are_the_authors_weights_and_refuses_swapped_outputs():
    rng = np.random.default_rng(1)
    full, miss = fake_output(rng, ("rgir", "ndsm")), fake_output(rng, ("ndsm",))
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    total, terms = shaspec_loss(full, miss, labels, "rgir")
    rest = terms["seg_full"] + terms["seg_miss"] + terms["aux"]
    torch.testing.assert_close(total, rest + 0.1 * terms["align"] + 0.02 * terms["domain"])
    with pytest.raises(ValueError, match="full scenario's output"):
        shaspec_loss(miss, full, labels, "rgir")
    with pytest.raises(ValueError, match="with ndsm missing"):
        shaspec_loss(full, miss, labels, "ndsm")


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradients_reach_every_part_and_each_objective_its_own():
    model = tiny_model().train()
    rgir, ndsm = inputs()
    out = model(rgir, ndsm, scenarios=("full", "missing_rgir"))
    total, terms = shaspec_loss(out["full"], out["missing_rgir"], target(), "rgir")
    names = {name for name, _ in model.named_parameters()}
    reached = grads(model, total)
    # As in HF, the fusion's attention pools feed only DIS2's distillation.
    assert reached == {n for n in names if not n.startswith("fusion_decoder.fusion.pools.")}
    # DAO trains the shared encoder (both stems) alone, DCO the specific encoders and the classifier alone.
    shared = {n for n in names if n.startswith("shared_encoder.")}
    assert grads(model, terms["align"]) == shared
    specific = {n for n in names if n.startswith(("specific_encoders.", "domain_classifier."))}
    assert grads(model, terms["domain"]) == specific


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = ShaSpec(ShaSpecConfig(width=8, embed_dim=32, heads=2, depth=1, class_width=4, pos_size=32))
    history, accuracy = overfit_one_batch(model, shaspec_loss, 60)
    first, last = history[0], history[-1]
    # The auxiliary heads of the coarsest levels cannot draw the blocks, so the total falls less than its parts.
    assert last["total"] < first["total"] / 3, history
    assert last["seg_full"] < first["seg_full"] / 5 and last["seg_miss"] < first["seg_miss"] / 5, history
    assert last["align"] < first["align"] / 2 and last["domain"] < first["domain"] / 10, history
    assert accuracy > 0.95
