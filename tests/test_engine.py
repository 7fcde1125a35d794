"""Engine unit tests: no ComfyUI. The engine is imported on its own, as a library user would."""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_engine():
    name = "cloak_engine_standalone"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "engine", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(ROOT, "engine")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


E = _load_engine()


def toy_encoder(seed=0, name="toy"):
    """A fixed random conv encoder with an 8× downscale, like a VAE encoder's shape."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.GELU(), torch.nn.Conv2d(16, 16, 3, 2, 1),
                              torch.nn.GELU(), torch.nn.Conv2d(16, 4, 3, 2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return E.module_encoder(net.requires_grad_(False), name)


def photo_like(b=2, h=72, w=88, seed=0):
    """8-bit images with a flat half (colour) and a textured half, like artwork on a plain background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(b, 3, h, w)
    x[..., : w // 2] = torch.tensor([0.8, 0.6, 0.3]).view(1, 3, 1, 1)
    x[..., w // 2:] = torch.rand(b, 3, h, w - w // 2, generator=g)
    return torch.round(x * 255) / 255


def glaze(x, enc, settings, seed=0, target_image=None):
    ens = E.as_ensemble(enc)
    pad = E.padder(x.shape[-2], x.shape[-1], ens.multiple)
    style = target_image if target_image is not None else 1 - x
    target = E.make_style_target(ens, style, "per_image", pad)
    return E.cloak_images(x, ens, lambda i, p: E.objective_for_target(ens, target, i, E.latent_sizes(ens, p)),
                          settings, seed=seed), target


def test_objective_falls_and_target_gain_positive():
    x = photo_like()
    res, _ = glaze(x, toy_encoder(), E.settings_for("default", "faster", "off"))
    for r in res.reports:
        assert r["target_gain"] > 0.15, r  # half of photo_like is flat colour, which gets a tenth of the cap


@pytest.mark.parametrize("robustness", ["off", "on"])
def test_loss_history_falls(robustness):
    enc = E.as_ensemble(toy_encoder())
    x = photo_like(1)
    pad = E.padder(x.shape[-2], x.shape[-1], 8)
    obj = E.LatentMatch(enc, [enc.members[0](pad(1 - x)).detach()])
    obj.calibrate(pad(x))
    res = E.optimize(x, obj.loss, E.AdaptiveBudget(10 / 255, min_psnr=35), E.Schedule(40), view=pad,
                     transforms=E.ROBUSTNESS_LEVELS[robustness])
    if robustness == "off":
        assert res.losses[0] == pytest.approx(1.0, abs=1e-4)  # normalised by the start distance
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    with torch.no_grad():
        assert float(obj.loss(pad(x + res.delta))) < 0.8


def test_budget_holds_on_saved_8bit_png(tmp_path):
    x = photo_like()
    settings = E.settings_for("high", "faster", "on")
    res, _ = glaze(x, toy_encoder(), settings)
    budget = settings.make_budget()
    budget.setup(x)
    for i in range(x.shape[0]):
        path = tmp_path / f"c{i}.png"
        arr = (res.images[i].permute(1, 2, 0).numpy() * 255.0).clip(0, 255).astype(np.uint8)  # as SaveImage does
        Image.fromarray(arr).save(path)
        back = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0).permute(2, 0, 1)
        change = (back - x[i]).abs()
        assert change.max() > 0, "nothing changed"
        assert bool((change <= budget.caps[i] + 1e-6).all()), float((change - budget.caps[i]).max())
        psnr = float(E.psnr(back[None], x[i:i + 1]))
        assert psnr >= settings.min_psnr - 0.5, psnr


@pytest.mark.parametrize("kind, spread", [("nightshade", 3.0), ("glaze", 1.2)])
def test_adaptive_budget_spares_flat_areas(kind, spread):
    """Flat areas get at most the floor's share of the cap (0.1 for the poison, 0.5 for the style cloak)."""
    x = photo_like(1)
    settings = E.settings_for("high", "default", "off", kind=kind)
    res, _ = glaze(x, toy_encoder(), settings)
    change = (res.images - x).abs()
    w = x.shape[-1]
    flat, textured = change[..., 4:-4, 4: w // 2 - 8], change[..., 4:-4, w // 2 + 8:-4]
    assert flat.max() <= (settings.floor + 0.1) * settings.eps + 1 / 255
    assert textured.mean() > spread * flat.mean(), (float(textured.mean()), float(flat.mean()))


def test_lowfreq_cut_turns_smooth_blotches_into_grain():
    """``lowfreq_cut`` takes the change's local mean out in smooth areas at each projection: a blotchy change on the
    flat half is mostly removed, fine grain there is mostly kept, and the blotch on the textured half is left alone
    (texture hides slow change). Over a cloak's steps the optimiser then puts grain where blotches were."""
    x = photo_like(1, 96, 192)
    g = torch.Generator().manual_seed(0)
    blotch = torch.nn.functional.interpolate(torch.randn(1, 3, 6, 12, generator=g), size=(96, 192), mode="bicubic")
    grain = torch.randn(1, 3, 96, 192, generator=g)
    flat, textured = (..., slice(8, -8), slice(8, 88)), (..., slice(8, -8), slice(104, -8))

    def projected(delta, cut):
        budget = E.AdaptiveBudget(16 / 255, floor=1.0, lowfreq_cut=cut)
        budget.setup(x)
        return budget.project(x, delta.clone())

    def energy(d, where):
        return float(d[where].pow(2).sum())

    for change, flat_kept in ((0.01 * blotch / blotch.abs().max(), (0.0, 0.2)), (0.005 * grain, (0.7, 1.01))):
        before, after = projected(change, 0.0), projected(change, 1.0)
        ratio = energy(after, flat) / energy(before, flat)
        assert flat_kept[0] <= ratio <= flat_kept[1], ratio
    before, after = projected(0.01 * blotch / blotch.abs().max(), 0.0), projected(0.01 * blotch / blotch.abs().max(), 1.0)
    assert energy(after, textured) / energy(before, textured) > 0.6
    with pytest.raises(ValueError, match="lowfreq_cut"):
        E.AdaptiveBudget(8 / 255, lowfreq_cut=1.5)


def test_visibility_weight_trades_target_gain_for_what_haarpsi_sees():
    """``visibility_weight`` adds 1 - HaarPSI(x', x) to the loss: the same cloak with the term on is less visible by
    HaarPSI (higher) and still moves toward the target; off (the poison's presets, GlazePerturb with its decoded
    objective off) the budget adds no penalty at all, so the loop runs as it did before the option existed. The style
    cloak's presets carry it (full resolution, weight 1) with the SSIM floor GLAZE_SSIM_RELIEF lower."""
    x = photo_like(1, 96, 96)
    glaze_preset = E.settings_for("default", "faster", "off")
    assert (glaze_preset.visibility_weight, glaze_preset.visibility_measure) == (1.0, "full")
    assert glaze_preset.min_ssim == pytest.approx(E.INTENSITY["default"]["min_ssim"] - E.cloak.GLAZE_SSIM_RELIEF)
    poison = E.settings_for("default", "faster", "off", kind="nightshade")
    assert poison.visibility_weight == 0.0 and poison.make_budget().penalty(x, x + 0.01) is None
    assert poison.min_ssim == E.INTENSITY["default"]["min_ssim"]
    latent_only = E.CloakOptions(render_quality="faster", robustness="off", decoded=False).settings()
    assert latent_only.visibility_weight == 0.0 and latent_only.min_ssim == poison.min_ssim
    base = dataclasses.replace(glaze_preset, steps=12, visibility_weight=0.0, visibility_measure="subsampled")
    assert glaze_preset.make_budget().penalty(x, x + 0.01).shape == (1,)
    plain, _ = glaze(x, toy_encoder(), base)
    seen, _ = glaze(x, toy_encoder(), dataclasses.replace(base, visibility_weight=1.0))
    hp_plain, hp_seen = float(E.metrics.haarpsi(plain.images, x)), float(E.metrics.haarpsi(seen.images, x))
    assert hp_seen > hp_plain + 0.005, (hp_plain, hp_seen)
    assert seen.reports[0]["target_gain"] > 0.05, seen.reports[0]
    with pytest.raises(ValueError, match="visibility_weight"):
        E.AdaptiveBudget(8 / 255, visibility_weight=-1.0)


def test_visibility_measure_full_sees_the_pixel_band_the_subsampled_one_misses():
    """piq's HaarPSI averages 2×2 pixels first, so a pixel-level checkerboard (the Nyquist band) is invisible to it and
    to a visibility term made against it; ``visibility_measure="full"`` reads every pixel and charges that change,
    "both" charges half; the repr (bench caches' key) names the measure only where it is not "subsampled" (the style
    cloak's presets read "full")."""
    x = photo_like(1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = (((yy + xx) % 2) * 2 - 1).float().expand_as(x) * (6 / 255)
    pen = {m: float(E.AdaptiveBudget(8 / 255, visibility_weight=1.0, visibility_measure=m).penalty(x, x + checker))
           for m in E.budgets.VISIBILITY_MEASURES}
    assert pen["subsampled"] < 1e-3 < pen["full"], pen
    assert pen["both"] == pytest.approx((pen["subsampled"] + pen["full"]) / 2, abs=1e-5)
    poison = E.settings_for("default", "default", "on", kind="nightshade")
    assert "visibility_measure" not in repr(poison)
    assert "visibility_measure='full'" in repr(E.settings_for("default", "default", "on"))
    with pytest.raises(ValueError, match="visibility_measure"):
        E.AdaptiveBudget(8 / 255, visibility_measure="eyes")


def test_an_all_black_picture_gets_a_finite_visibility_term_and_cloak():
    """piq's HaarPSI of two all-black pictures is 0/0 (no Haar response anywhere): inf, and NaN in the gradient, which
    the style cloak's visibility term (on in its presets) turned into a NaN picture. Such a pair reads 1 (identical)
    and a black picture beside a photo in one batch cloaks to finite pixels."""
    x = torch.cat([torch.zeros(1, 3, 32, 32), photo_like(1, 32, 32)])
    changed = (x + 0.01 * torch.rand_like(x) * torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)).requires_grad_()
    seen = E.metrics.haarpsi(changed, x, subsample=False)
    seen.sum().backward()
    seen = seen.detach()
    assert float(seen[0]) == 1.0 and float(seen[1]) < 1 and bool(torch.isfinite(changed.grad).all())
    res, _ = glaze(x, toy_encoder(), E.settings_for("default", "faster", "on"))
    assert bool(torch.isfinite(res.images).all())
    assert float((res.images[1] - x[1]).abs().max()) > 0  # the photo beside it is still cloaked


def test_linf_box_holds():
    x = photo_like()
    res, _ = glaze(x, toy_encoder(), E.reference_settings(4 / 255, 20))
    assert float((res.images - x).abs().max()) <= 4 / 255 + 1e-6


def test_same_seed_same_bytes_different_seed_differs():
    x = photo_like()
    s = E.settings_for("default", "faster", "on")
    a, _ = glaze(x, toy_encoder(), s, seed=3)
    b, _ = glaze(x, toy_encoder(), s, seed=3)
    c, _ = glaze(x, toy_encoder(), s, seed=4)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_each_image_cloaked_independently_of_batch():
    x = photo_like(2)
    s = E.settings_for("default", "faster", "on")
    both, _ = glaze(x, toy_encoder(), s, seed=5)
    first, _ = glaze(x[:1], toy_encoder(), s, seed=5)
    assert torch.equal(both.images[:1], first.images)


@pytest.mark.parametrize("name,fn", [
    ("jpeg", lambda x, g: E.transforms.jpeg(x, 60)),
    ("resize", lambda x, g: E.transforms.resize_down_up(x, 0.5)),
    ("blur", lambda x, g: E.transforms.gaussian_blur(x, 1.0)),
    ("noise", lambda x, g: E.transforms.gaussian_noise(x, 0.02, g)),
    ("crop", lambda x, g: E.transforms.affine(x, E.transforms.crop_resize_theta(x.shape[0], 0.9, 0.05, 0.0))),
    ("rotate", lambda x, g: E.transforms.affine(x, E.transforms.rotation_theta(x.shape[0], 5, 64, 80))),
    ("screenshot", lambda x, g: E.transforms.screenshot(x)),
])
def test_eot_transforms_carry_gradients(name, fn):
    x = photo_like(2, 64, 80).requires_grad_(True)
    y = fn(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    (g,) = torch.autograd.grad((y * torch.linspace(0, 1, 80)).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_eot_draws_every_kind_and_warps_targets():
    eot = E.EOT(p_identity=0.0)
    gen = torch.Generator().manual_seed(0)
    x = photo_like(1, 64, 64)
    warped = 0
    for _ in range(30):
        y, warp = eot(x, gen)
        assert y.shape == x.shape
        if warp is not None:
            z = torch.rand(1, 4, 8, 8)
            assert warp(z).shape == z.shape
            warped += 1
    assert warped > 0


def test_style_stats_objective_falls():
    enc = E.as_ensemble(toy_encoder())
    x = photo_like(1)
    pad = E.padder(x.shape[-2], x.shape[-1], 8)
    target = E.make_style_target(enc, torch.rand(3, 3, 64, 64), "style_stats", pad)
    res = E.cloak_images(x, enc, lambda i, p: E.objective_for_target(enc, target, i, E.latent_sizes(enc, p)),
                         E.settings_for("default", "faster", "off"))
    assert res.reports[0]["target_gain"] > 0.1


def test_ensemble_moves_every_member():
    ens = E.EncoderEnsemble([toy_encoder(0, "a"), toy_encoder(1, "b")], [1.0, 2.0])
    assert ens.weights == pytest.approx([1 / 3, 2 / 3])
    x = photo_like(1)
    pad = E.padder(x.shape[-2], x.shape[-1], ens.multiple)
    target = E.make_style_target(ens, 1 - x, "per_image", pad)
    obj = E.objective_for_target(ens, target, 0, E.latent_sizes(ens, pad(x)))
    res = E.cloak_images(x, ens, lambda i, p: obj, E.settings_for("default", "faster", "off"))
    d0, d1 = obj.distances(pad(x)), obj.distances(pad(res.images))
    assert bool((d1 < 0.95 * d0).all()), (d0, d1)


def test_target_from_another_encoder_is_refused():
    a, b = E.as_ensemble(toy_encoder(0, "a")), E.as_ensemble(toy_encoder(1, "b"))
    x = photo_like(1)
    pad = E.padder(x.shape[-2], x.shape[-1], 8)
    target = E.make_style_target(a, x, "mean", pad)
    with pytest.raises(ValueError, match="same encoder"):
        E.objective_for_target(b, target, 0, [(9, 11)])


def test_cancel_and_early_stop():
    x = photo_like(1)
    enc = E.as_ensemble(toy_encoder())
    pad = E.padder(x.shape[-2], x.shape[-1], 8)
    obj = E.LatentMatch(enc, [enc.members[0](pad(1 - x)).detach()])
    obj.calibrate(pad(x))
    calls = []
    with pytest.raises(E.Cancelled):
        E.optimize(x, obj.loss, E.LinfBox(0.03), E.Schedule(50), view=pad,
                   hooks=E.Hooks(should_stop=lambda: calls.append(1) or len(calls) > 3))
    assert len(calls) == 4
    res = E.optimize(x, obj.loss, E.LinfBox(1e-4), E.Schedule(500, step_rule="sign", patience=10), view=pad)
    assert res.stopped_early and res.steps_run < 500


@pytest.mark.parametrize("bad,match", [
    (torch.rand(0, 3, 64, 64), "empty"),
    (torch.rand(1, 3, 16, 64), "smaller than"),
    (torch.rand(1, 4, 64, 64), r"\[B, 3, H, W\]"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
])
def test_bad_input_errors_say_what_to_do(bad, match):
    ens = E.as_ensemble(toy_encoder())
    with pytest.raises(ValueError, match=match):
        E.cloak_images(bad, ens, lambda i, p: None, E.settings_for())


def test_bad_presets_name_the_value():
    with pytest.raises(ValueError, match="'loud'"):
        E.settings_for("loud")
    with pytest.raises(ValueError, match="custom"):
        E.settings_for("custom", custom_eps=None)


def test_the_style_cloak_and_the_poison_keep_their_own_method_settings():
    """GlazePerturb (kind glaze) floors flat areas at 0.5 and mixes the decoded objective in; NightshadePoison keeps
    floor 0.1 and the latent objective; decoded_objective off drops the decoded term only; the reference loop has
    neither."""
    glaze, poison = E.settings_for(), E.settings_for(kind="nightshade")
    assert (glaze.floor, glaze.decoded_weight) == (0.5, 0.5) and (poison.floor, poison.decoded_weight) == (0.1, 0.0)
    assert E.CloakOptions().settings().decoded_weight == 0.5
    off = E.CloakOptions(decoded=False)
    assert off.settings().decoded_weight == 0.0 and off.settings().floor == 0.5
    assert "decoded objective off" in off.describe() and "decoded" not in E.CloakOptions().describe()
    assert E.CloakOptions(kind="nightshade").settings().decoded_weight == 0.0
    assert E.reference_settings(4 / 255, 10).decoded_weight == 0.0
    with pytest.raises(ValueError, match="unknown cloak kind 'poison'"):
        E.settings_for(kind="poison")


def test_without_native_bf16_every_preset_and_path_runs_fp32(monkeypatch):
    """On a CPU without AVX512-BF16/AMX (detection patched to "absent"), every preset of both kinds, the default
    options and the autocast wrapper resolve to float32: nothing the pack runs by default emulates bf16."""
    precision = sys.modules["cloak_engine_standalone.precision"]
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    for kind in E.cloak.KINDS:
        for intensity in list(E.INTENSITY) + ["custom"]:
            for quality in E.RENDER_QUALITY:
                options = E.CloakOptions(intensity=intensity, render_quality=quality, kind=kind)
                assert precision.resolve(options.settings().precision, "cpu") == torch.float32, (kind, intensity,
                                                                                                  quality)
        assert precision.resolve(E.settings_for(kind=kind).precision, "cpu") == torch.float32
    members = [toy_encoder()]
    assert precision.autocast_members(members, "auto", "cpu") == members  # no Autocast wrapper
    assert precision.precision_context("auto", "cpu").__class__.__name__ == "nullcontext"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)  # the check can fail: with bf16, auto is bf16
    assert precision.resolve(E.CloakOptions().settings().precision, "cpu") == torch.bfloat16


def test_lpips_budget_explains_missing_weights():
    try:
        import lpips  # noqa: F401
        pytest.skip("lpips is installed here; the message path is for machines without it")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="adaptive"):
        E.LpipsBudget(8 / 255)


def test_metrics_known_answers():
    x = photo_like(1)
    assert float(E.psnr(x, x)) > 100
    assert float(E.ssim(x, x)) == pytest.approx(1.0, abs=1e-4)
    y = (x + 1 / 255).clamp(0, 1)
    assert 40 < float(E.psnr(y, x)) < 49
    assert float(E.target_gain(torch.tensor([2.0]), torch.tensor([1.0]))) == pytest.approx(0.5)
    assert float(E.target_gain(torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, 4.0]]))) == pytest.approx(0.25)


def test_visibility_measures_tell_a_mottle_from_grain_of_the_same_psnr():
    """HaarPSI/GMSD (piq) and the change's low-frequency share: a smooth blotchy change on a flat area is more
    visible than fine noise of the very same PSNR, which PSNR alone cannot tell."""
    M = sys.modules["cloak_engine_standalone.metrics"]
    x = torch.full((1, 3, 128, 128), 0.6) + photo_like(1, 128, 128) * 0.05
    g = torch.Generator().manual_seed(0)
    grain = torch.randn(x.shape, generator=g)
    mottle = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=g), size=128, mode="bicubic")
    rms = 0.02
    a = x + grain * rms / grain.pow(2).mean().sqrt()
    b = x + mottle * rms / mottle.pow(2).mean().sqrt()
    assert float(E.psnr(a, x)) == pytest.approx(float(E.psnr(b, x)), abs=0.05)
    same = M.visibility(x, x)
    assert same["haarpsi"][0] == pytest.approx(1.0, abs=1e-4) and same["gmsd"][0] == pytest.approx(0.0, abs=1e-4)
    va, vb = M.visibility(x, a.clamp(0, 1)), M.visibility(x, b.clamp(0, 1))
    assert vb["low_freq"][0] > 0.8 > 0.2 > va["low_freq"][0], (va, vb)
    # HaarPSI sees the mottle (0.84 against 0.93 here); GMSD, a gradient measure, sees grain more: the reason
    # reports carry both
    assert vb["haarpsi"][0] < va["haarpsi"][0] - 0.05 and vb["gmsd"][0] < va["gmsd"][0], (va, vb)
    for v in (va, vb):
        assert 0 < v["haarpsi"][0] < 1 and v["gmsd"][0] > 0


def test_engine_has_no_comfyui_imports():
    import ast
    banned = {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server", "execution"}
    for fn in os.listdir(os.path.join(ROOT, "engine")):
        if fn.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "engine", fn)).read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                for n in names:
                    assert n.split(".")[0] not in banned, f"engine/{fn} imports {n}"


def test_ssim_floor_shrinks_the_change_until_it_holds():
    x = photo_like(1)
    loose = E.settings_for("custom", "faster", "off", custom_eps=16 / 255)
    res, _ = glaze(x, toy_encoder(), loose)
    assert res.reports[0]["ssim"] < 0.99, res.reports[0]  # the floor below has something to do
    strict = E.CloakSettings(**{**loose.__dict__, "min_ssim": 0.99})
    held, _ = glaze(x, toy_encoder(), strict)
    r = held.reports[0]
    assert r["ssim"] >= 0.99 and 0 < r["floor_scale"] < 1, r
    assert float(E.ssim(held.images, x)) >= 0.99 and not torch.equal(held.images, x)
    assert 0 < r["target_gain"] < res.reports[0]["target_gain"]
    assert "SSIM/PSNR floor" in E.format_report(held.reports, "t")


def test_presets_hold_their_psnr_floor_on_the_8bit_image():
    # the adaptive budget's caps sit on whole 8-bit levels and the change fills its L2 ceiling, so rounding
    # can land a few hundredths of a dB under the preset's floor; the final shrink must put it back above
    x = photo_like(2)
    s = E.CloakSettings(**{**E.settings_for("low", "faster", "off").__dict__, "steps": 15})
    res, _ = glaze(x, toy_encoder(), s)
    budget = s.make_budget()
    budget.setup(x)
    assert float((budget.caps * 255 - torch.round(budget.caps * 255)).abs().max()) < 1e-4  # whole levels
    for i, r in enumerate(res.reports):
        assert r["psnr"] >= s.min_psnr, r
        assert float(E.psnr(res.images[i:i + 1], x[i:i + 1])) >= s.min_psnr
        assert r["target_gain"] > 0, r


def test_a_job_prepares_and_probes_once_and_never_changes_its_objectives():
    """The cloak job (engine.job): the encoder is prepared once per job however many images, the plan probes it
    once, and the objectives keep the encoder they were made with (tiled and autocast passes are passed in)."""
    prepared = []
    enc = toy_encoder()
    enc.prepare = lambda: prepared.append(1)
    ens = E.as_ensemble(enc)
    x = photo_like(3, 96, 96)
    pad = E.padder(96, 96, ens.multiple)
    target = E.make_style_target(ens, 1 - x, "per_image", pad)
    made = []

    def make(i, padded):
        made.append(E.objective_for_target(ens, target, i, E.latent_sizes(ens, padded)))
        return made[-1]

    settings = E.CloakSettings(steps=3, tile=48, precision="fp32")
    job = E.CloakJob(x, ens, settings)
    estimate = job.plan(free_bytes=8 * 2**30)
    assert estimate.tiles == 4 and job.tile == 48 and estimate.images == 3
    result = job.run(make, seed=0)
    assert len(prepared) == 1 and len(made) == 3
    assert all(obj.encoder is ens for obj in made)  # never swapped for the tiled or autocast view
    assert all(r["tiles"] == 4 for r in result.reports)
    paragraphs = job.report(result, "title").split("\n\n")
    assert paragraphs[paragraphs.index("title") + 1].startswith("estimated peak memory")  # the estimate follows


def test_the_engine_nightshade_entry_point_is_the_job():
    prepared = []
    enc = toy_encoder()
    enc.prepare = lambda: prepared.append(1)
    x = photo_like(2)
    import importlib
    ns = importlib.import_module(E.__name__ + ".nightshade")
    res = ns.poison_images(x, enc, 1 - x[:1], E.settings_for("default", "faster", "off", kind="nightshade"))
    assert len(prepared) == 1 and len(res.checks) == 2 and res.cloak.images.shape == x.shape
