"""The amortised start (engine.warmstart): the optimiser starts from a given perturbation inside the budget, the job
starts from the encoder's warm start where it carries one (and from zero otherwise), and a trained net's file
round-trips."""
from __future__ import annotations

import dataclasses as dc
import importlib

import pytest
import torch

from test_engine import E, toy_encoder  # the engine imported on its own, without ComfyUI

W = importlib.import_module(E.__name__ + ".warmstart")


def test_the_optimiser_starts_from_the_given_perturbation_projected_into_the_budget():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    budget = E.LinfBox(4 / 255)
    init = torch.full_like(x, 10 / 255)  # outside the box: projected to 4/255 first
    seen = []
    res = E.optimize(x, lambda p, w: p.sum(dim=(1, 2, 3)) * 0, budget, E.Schedule(1, lr=1e-6, lr_final=1e-6),
                     init=init, hooks=E.Hooks(on_step=lambda s, n, v, d: seen.append(d.clone())))
    budget.setup(x)
    want = budget.project(x, init)  # the box, and the picture's own 0..1 range
    assert torch.allclose(res.delta, want, atol=1e-6) and float((want - 4 / 255).abs().median()) < 1e-6
    plain = E.optimize(x, lambda p, w: p.sum(dim=(1, 2, 3)) * 0, budget, E.Schedule(1, lr=1e-6, lr_final=1e-6))
    assert plain.delta.abs().max() < 1e-6


def test_a_cloak_starts_from_the_encoders_warm_start_only_where_asked_and_carried():
    enc = toy_encoder()
    member = enc if not hasattr(enc, "members") else enc.members[0]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    style = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ens = E.as_ensemble(member)
    target = E.make_style_target(ens, style, "per_image", E.padder(64, 64, 8))
    s = dc.replace(E.settings_for("default", "faster", "off"), steps=1, lr=1e-6, lr_final=1e-6, min_ssim=None,
                   decoded_weight=0.0, decoded_style=0.0)
    torch.manual_seed(0)
    net = W.WarmStart(channels=4, factor=8, hidden=8)
    with torch.no_grad():
        net.paint.bias.fill_(3.0)  # a start that saturates every cap upwards
    warm = dc.replace(member, warm_start=net)
    ens_warm = E.as_ensemble(warm)
    with torch.enable_grad():
        zero = E.cloak_images(x, ens_warm, E.glaze_objectives(ens_warm, target), s).images
        started = E.cloak_images(x, ens_warm, E.glaze_objectives(ens_warm, target), dc.replace(s, warm_start=True))
        none = E.cloak_images(x, ens, E.glaze_objectives(ens, target), dc.replace(s, warm_start=True)).images
    assert (zero - x).abs().max() <= 1 / 255 + 1e-6 and torch.equal(zero, none)  # no net, or not asked: from zero
    change = started.images - x
    assert float(change.mean()) > 0.5 / 255 and started.reports[0]["psnr"] >= s.min_psnr - 0.05


def test_a_trained_warm_start_file_round_trips_and_is_found_by_encoder_name(tmp_path):
    torch.manual_seed(0)
    net = W.WarmStart(channels=4, factor=8, hidden=8)
    from safetensors.torch import save_file
    import json
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "toy-abc.safetensors"),
              metadata={"config": json.dumps(net.config())})
    got = W.for_encoder("toy-abc", str(tmp_path))
    z, t = torch.randn(1, 4, 5, 6), torch.randn(1, 4, 5, 6)
    caps = torch.full((1, 1, 40, 48), 0.05)
    assert torch.allclose(got.start(z, t, caps), net.start(z, t, caps))
    assert got.start(z, t, caps).abs().max() <= 0.05 + 1e-7
    assert W.for_encoder("other", str(tmp_path)) is None
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a warm-start file"):
        W.load(str(tmp_path / "bad.safetensors"))


def test_render_quality_faster_is_the_fast_path_for_the_cloak_and_keeps_its_old_meaning_for_the_poison():
    """faster (2026-12-07): the style cloak runs 15 steps at three times the step size with the decoded term refreshed
    every 3rd pass; default (2026-12-08): 24 steps at twice the step size, refreshed every 3rd pass; the poison, not
    measured on those paths, keeps 50 / 100 plain steps; slowest is 300 plain steps for both."""
    for quality, kind, want in (("faster", "glaze", (15, 0.75, 3)), ("default", "glaze", (24, 0.5, 3)),
                                ("faster", "nightshade", (50, 0.25, 1)), ("default", "nightshade", (100, 0.25, 1)),
                                ("slowest", "glaze", (300, 0.25, 1)), ("slowest", "nightshade", (300, 0.25, 1))):
        s = E.settings_for("default", quality, "on", kind=kind)
        assert (s.steps, s.lr, s.decoded_every) == want, (quality, kind)
