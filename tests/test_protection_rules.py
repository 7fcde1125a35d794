"""Engine rules behind issue 12: a report says loudly when an image went out unprotected; the up-front cost
estimate scales with the image and refuses what cannot fit; transparent pixels are never changed."""
from __future__ import annotations

import importlib
import logging

import pytest
import torch

from test_engine import E  # the engine imported on its own, without ComfyUI

est = importlib.import_module(E.__name__ + ".estimate")
cloak_images, format_report, settings_for = E.cloak_images, E.format_report, E.settings_for
EncoderEnsemble, module_encoder, LatentMatch = E.EncoderEnsemble, E.module_encoder, E.LatentMatch
style_target_from_latents = E.style_target_from_latents

GOOD = {"psnr": 35.1, "ssim": 0.97, "target_gain": 0.31, "linf_255": 20.0, "steps": 100, "floor_scale": 1.0,
        "seconds": 1.0}


@pytest.mark.parametrize("bad, why", [
    ({"floor_scale": 0.0, "linf_255": 0.0, "target_gain": 0.0}, "scaled its change to 0.00"),
    ({"target_gain": float("nan")}, "NaN"),
    ({"linf_255": 0.0, "target_gain": 0.0}, "no pixel changed"),
    ({"target_gain": 0.002}, "barely moved"),
])
def test_an_unprotected_image_is_named_in_the_first_line_and_the_log(caplog, bad, why):
    with caplog.at_level(logging.WARNING):
        text = format_report([GOOD, {**GOOD, **bad}], "GlazePerturb | settings")
    first = text.splitlines()[0]
    assert first.startswith("WARNING: 1 of 2 image(s) NOT protected") and "image 1" in first and why in first
    assert "image 0:" not in first
    assert any("NOT protected" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_protected_batch_has_no_warning(caplog):
    with caplog.at_level(logging.WARNING):
        text = format_report([GOOD, GOOD], "GlazePerturb | settings", ["estimated peak memory 0.1 GiB"])
    assert text.splitlines()[0].startswith("GlazePerturb") and "WARNING" not in text and not caplog.records
    assert "estimated peak memory" in text


def tiny_encoder():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, 2, 1))
    return EncoderEnsemble([module_encoder(net.requires_grad_(False), "tiny", multiple=4, min_size=8)])


def test_cost_estimate_scales_with_pixels_passes_and_steps_and_refuses_what_cannot_fit():
    enc = tiny_encoder()
    probed = est.probe(enc)
    assert probed.bytes_per_pixel > 0 and probed.seconds_per_pixel > 0
    assert est.probe(enc) is probed  # measured once per encoder
    small = est.estimate_cost(probed, 64, 64, 1, 100, enc.multiple)
    big = est.estimate_cost(probed, 4096, 4096, 1, 100, enc.multiple)
    eot2 = est.estimate_cost(probed, 64, 64, 1, 100, enc.multiple, est.Passes(eot_samples=2))
    assert big.peak_bytes == pytest.approx(small.peak_bytes * 4096, rel=1e-6)
    assert eot2.peak_bytes > small.peak_bytes and eot2.seconds == pytest.approx(2 * small.seconds)
    assert est.estimate_cost(probed, 64, 64, 3, 100).seconds == pytest.approx(3 * small.seconds)
    assert est.fits_in_memory(small, 2**30) and not est.fits_in_memory(big, big.peak_bytes)
    message = est.refusal_message(big, big.peak_bytes / 2, 4096, 4096)
    assert "4096x4096 does not fit in memory" in message and "GiB is free" in message and "fits here" in message


def test_a_step_costs_its_passes_its_round_trips_and_its_own_work_only_beside_a_light_encoder():
    """The step's own work (EOT transform, projection) is about a quarter of a TAE's pass and nothing beside a full
    VAE's: a flat 1.5x of the passes overcharged full VAEs by 1.3-1.6x (bench_scale's vae rows)."""
    light, slow = est.Probe(100.0, 1e-6), est.Probe(100.0, 1e-6, slow=True)
    on, off = est.Passes(), est.Passes(eot=False)
    rt = est.Passes(roundtrip=0.15)
    assert est.step_passes(light, off) == est.step_passes(slow, off) == 1.0
    assert est.step_passes(slow, on) == 1.0 and est.step_passes(light, on) == pytest.approx(1 + est.STEP_WORK_PASSES)
    assert est.step_passes(slow, rt) == pytest.approx(1.15)
    assert est.step_passes(light, est.Passes(eot_samples=2, roundtrip=0.15)) == pytest.approx(2.3 + 2 * 0.25)
    a = est.estimate_cost(slow, 512, 512, 1, 100, 8, rt)
    b = est.estimate_cost(light, 512, 512, 1, 100, 8, rt)
    assert b.seconds / a.seconds == pytest.approx(1.4 / 1.15)


def test_frozen_pixels_are_returned_exactly():
    enc = tiny_encoder()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.999 + 1e-4  # off the 8-bit grid
    target = style_target_from_latents(enc.name, [enc.members[0].name], [[torch.randn(1, 4, 4, 4)]], "per_image")
    keep = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    keep[..., :, :7] = False
    result = cloak_images(x, enc, lambda i, p: LatentMatch(enc, target.latents), settings_for("custom", "faster",
                          "off", 16 / 255, "linf"), keep=keep)
    frozen = ~keep.expand_as(x)
    assert torch.equal(result.images[frozen], x[frozen])
    assert (result.images - x)[~frozen].abs().max() > 0
