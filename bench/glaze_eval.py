"""Evaluation pieces shared by the Glaze benches: one cloak, the reference at a matched PSNR, attacked gains.

Matching is per image: the reference loop (PhotoGuard-style L∞ sign PGD to the same target, same steps, no
EOT) runs at the whole 8-bit level ε = k/255 nearest the preset's PSNR, and GlazePerturb is then run with its
PSNR ceiling set to that reference image's own PSNR, so each pair changes the image by the same amount.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

import common


def engine():
    return common.load_host().engine


def pil_jpeg(x, quality=75):
    from importlib import import_module
    return import_module("ComfyUI-Cloak.engine.attacks").pil_codec(x, "JPEG", quality)


def gains(E, ensemble, x, x_adv, target_pixels, roundtrip=None):
    """Per member: clean gain, gain after real JPEG q75, after a 0.5× resize, after the decode→encode round trip.

    ``target_pixels`` ``[1, 3, H, W]`` is the style image; ``roundtrip`` (optional) ``D(E(·))`` of a real
    decoder. Returns a dict of ``[M]`` tensors.
    """
    pad = E.padder(x.shape[-2], x.shape[-1], ensemble.multiple)
    target = E.make_style_target(ensemble, target_pixels, "per_image", pad)
    obj = E.objective_for_target(ensemble, target, 0, E.latent_sizes(ensemble, pad(x)))
    out = {}
    with torch.no_grad():
        d0 = obj.distances(pad(x))[0]
        attacks = {"gain": lambda y: y, "gain_jpeg75": pil_jpeg,
                   "gain_resize05": lambda y: E.transforms.resize_down_up(y, 0.5)}
        if roundtrip is not None:
            attacks["gain_roundtrip"] = lambda y: roundtrip(pad(y))[..., :y.shape[-2], :y.shape[-1]].clamp(0, 1)
        for key, attack in attacks.items():
            out[key] = 1 - obj.distances(pad(attack(x_adv)))[0] / d0.clamp_min(1e-12)
    return out


def cloak(E, ensemble, x, target_pixels, settings, seed=0):
    """One image ``[1, 3, H, W]``: (cloaked image, report dict)."""
    pad = E.padder(x.shape[-2], x.shape[-1], ensemble.multiple)
    target = E.make_style_target(ensemble, target_pixels, "per_image", pad)

    def make_objective(i, padded):
        return E.objective_for_target(ensemble, target, i, E.latent_sizes(ensemble, padded))

    with torch.enable_grad():
        res = E.cloak_images(x, ensemble, make_objective, settings, seed=seed)
    return res.images, res.reports[0]


def reference_level(psnr_goal: float) -> int:
    """The 8-bit L∞ level whose saturated-sign image has a PSNR near ``psnr_goal`` (sign PGD fills the box)."""
    return max(1, round(255 * 10 ** (-psnr_goal / 20) * 1.05))


def matched_pair(E, ensemble, x, t, settings, seed=0, roundtrip=None, ref_level=None):
    """Reference at the level nearest the preset's PSNR, then ours at the reference's PSNR; metrics for both."""
    k = ref_level or reference_level(settings.min_psnr if settings.min_psnr else 35.0)
    rows = {}
    t0 = time.perf_counter()
    ref_img, ref_rep = cloak(E, ensemble, x, t, E.reference_settings(k / 255, settings.steps), seed)
    ref_sec = time.perf_counter() - t0
    ours_settings = dataclasses.replace(settings, min_psnr=ref_rep["psnr"])
    t0 = time.perf_counter()
    our_img, our_rep = cloak(E, ensemble, x, t, ours_settings, seed)
    our_sec = time.perf_counter() - t0
    for name, img, rep, sec in (("ours", our_img, our_rep, our_sec), ("ref", ref_img, ref_rep, ref_sec)):
        g = gains(E, ensemble, x, img, t, roundtrip)
        seen = E.metrics.visibility(x, img)
        rows[name] = dict(psnr=rep["psnr"], ssim=rep["ssim"], sec=sec, eps_255=k,
                          haarpsi=seen["haarpsi"][0], gmsd=seen["gmsd"][0],
                          **{key: float(v.mean()) for key, v in g.items()}, image=img)
    return rows


def mean_rows(per_image: list[dict], keys) -> dict:
    return {k: sum(r[k] for r in per_image) / len(per_image) for k in keys}


def fmt_table(title, results, keys):
    """``results``: list of (label, dict) rows; prints a fixed-width table."""
    lines = [title, f"{'row':28} " + " ".join(f"{k:>14}" for k in keys)]
    for label, r in results:
        lines.append(f"{label:28} " + " ".join(f"{r.get(k, math.nan):14.4f}" for k in keys))
    return "\n".join(lines)


# ------------------------------------------------------------------ settings variants spelled name:key=value
def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def changes(settings, spec: str) -> dict:
    """The settings changes ``key=value`` of ``name:key=value:...``."""
    out = {}
    for pair in spec.split(":")[1:]:
        key, _, value = pair.partition("=")
        if key == "quality":  # the render quality preset the variant starts from (see variant)
            continue
        if key not in {f.name for f in dataclasses.fields(settings)}:
            raise SystemExit(f"{spec}: {key!r} is not a CloakSettings field")
        value = parse_value(value)
        if isinstance(getattr(settings, key), float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # decoded_style=0 is the same setting (and cache key) as decoded_style=0.0
        out[key] = value
    return out


# --------------------------------------------------------------- a job's up-front estimate against its measurement
def estimate_against_run(E, enc, x, t, settings, steps: int, free: float, sync=None) -> dict:
    """GlazePerturb's job on ``x`` toward ``t``: the up-front estimate of ``settings`` (its full step count) and a
    run of ``steps`` steps, timed per step (``sync`` called before each stamp, e.g. torch.cuda.synchronize).
    Returns ``{"estimate", "per_step", "fixed", "measured" (fixed + the full steps x per step), "report"}``."""
    with torch.enable_grad():
        estimate = E.CloakJob(x, enc, settings).plan(free)
    target = E.make_style_target(enc, t, "per_image", E.padder(*x.shape[-2:], enc.multiple))
    stamps = []

    def stamp(*_):
        if sync is not None:
            sync()
        stamps.append(time.perf_counter())

    with torch.enable_grad():
        job = E.CloakJob(x, enc, dataclasses.replace(settings, steps=steps))
        job.plan(free)
        start = time.perf_counter()
        res = job.run(E.glaze_objectives(enc, target), 0, E.Hooks(on_step=stamp))
        total = time.perf_counter() - start
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else total
    fixed = total - per_step * len(stamps)
    return {"estimate": estimate, "per_step": per_step, "fixed": fixed,
            "measured": fixed + settings.steps * per_step, "report": res.reports[0]}
