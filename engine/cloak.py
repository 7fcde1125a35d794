"""Cloaking images end to end: presets, padding, one optimisation per image, 8-bit output, report.

Used by GlazePerturb and NightshadePoison alike; only the objective differs. Images are ``[B, 3, H, W]``
in 0..1 (the nodes convert from ComfyUI's ``[B, H, W, C]``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import metrics
from .budgets import AdaptiveBudget, Frozen, LinfBox, LpipsBudget, quantize_to_8bit
from .encoders import EncoderEnsemble
from .optimize import optimize
from .precision import autocast_members
from .tiling import AUTO_TILE, DEFAULT_MARGIN, REPORT_MARGIN, TiledEncoder, TiledGradient, plan_tiles
from .transforms import ROBUSTNESS_LEVELS, WithRoundTrip



@dataclass(frozen=True)
class CloakSettings:
    """Everything that shapes one cloak. ``eps`` is the largest per-pixel change (0..1 units)."""

    eps: float = 8 / 255
    floor: float = 0.1
    min_psnr: float | None = 35.0
    min_ssim: float | None = None
    budget: str = "adaptive"  # "adaptive" | "linf" | "lpips"
    steps: int = 100
    robustness: str = "on"
    step_rule: str = "l2"  # see bench/sweep_glaze.py: best SSIM and survival at equal PSNR
    lr: float = 0.25
    lr_final: float = 0.01
    patience: int = 0
    # share of EOT draws that are a decode→encode round trip, when an encoder carries its decoder (TAE files with
    # a *_decoder beside them): on TAEF2 at 128² it lifted the gain left after a round trip from 0.94x to 1.19x
    # the reference's at matched PSNR, clean and JPEG gain unchanged (bench/tune_taef2.py ssim93 vs ssim93_rt)
    roundtrip_p: float = 0.15
    # tiles (engine.tiling): 0 = automatic (whole image when it is at most AUTO_TILE² pixels, else tiles of about
    # AUTO_TILE px a side, or smaller where memory is short); a positive side forces tiles of that size; -1 = never
    tile: int = 0
    margin: int = DEFAULT_MARGIN
    # precision of the encoder passes inside the optimisation: "fp32", "bf16", "fp16" or "auto" (see
    # engine.precision); the perturbation, its optimiser state, calibration and the report stay float32
    precision: str = "fp32"

    def make_budget(self):
        if self.budget == "adaptive":
            return AdaptiveBudget(self.eps, floor=self.floor, min_psnr=self.min_psnr)
        if self.budget == "linf":
            return LinfBox(self.eps)
        if self.budget == "lpips":
            return LpipsBudget(self.eps, floor=self.floor, min_psnr=self.min_psnr)
        raise ValueError(f"unknown budget {self.budget!r}; choose adaptive, linf or lpips")


# Intensity: how much the image may change. eps caps any pixel; min_psnr caps the total change; min_ssim is
# a floor on structural similarity, enforced at the end by shrinking the change (images with large smooth
# or dark areas, where SSIM is most sensitive, are the ones it acts on).
# The per-pixel caps are generous and the PSNR ceiling is what binds: a large cap lets the change gather in
# the busiest texture, which moves the encoder more *and* costs less SSIM than spreading it (bench/sweep_glaze.py,
# doubling 6/10/16 to 12/20/32: +16-21 % gain at equal PSNR, SSIM up); flat areas keep floor 0.1 of it.
# SSIM floors 0.96/0.93/0.87 (were 0.97/0.95/0.90): on TAEF2 the old floors shrank most cloaks by ~0.8 dB past
# their PSNR ceiling; 0.93 at default raised gain 0.88x -> 0.94x, JPEG q75 gain 1.13x -> 1.27x the reference's at
# matched PSNR, with mean SSIM 0.94 against the reference's 0.88 (bench/tune_taef2.py, current vs ssim93).
INTENSITY = {
    "low": dict(eps=12 / 255, min_psnr=38.0, min_ssim=0.96),
    "default": dict(eps=20 / 255, min_psnr=35.0, min_ssim=0.93),
    "high": dict(eps=32 / 255, min_psnr=32.0, min_ssim=0.87),
}
# Render quality: how long to compute (optimisation steps), as in Glaze.
RENDER_QUALITY = {"faster": 50, "default": 100, "slowest": 300}


def settings_for(intensity: str = "default", render_quality: str = "default", robustness: str = "on",
                 custom_eps: float | None = None, budget: str = "adaptive") -> CloakSettings:
    """Settings from the user-facing presets. ``intensity="custom"`` uses ``custom_eps`` (0..1 units)."""
    if render_quality not in RENDER_QUALITY:
        raise ValueError(f"unknown render quality {render_quality!r}; choose one of {list(RENDER_QUALITY)}")
    if robustness not in ROBUSTNESS_LEVELS:
        raise ValueError(f"unknown robustness {robustness!r}; choose one of {list(ROBUSTNESS_LEVELS)}")
    if intensity == "custom":
        if custom_eps is None or not 0 < custom_eps <= 0.25:
            raise ValueError(f"custom_budget: a custom intensity needs a largest change in (0, 64/255], got "
                             f"{custom_eps if custom_eps is None else round(custom_eps * 255, 3)}/255")
        level = dict(eps=custom_eps, min_psnr=None, min_ssim=None)
    elif intensity in INTENSITY:
        level = INTENSITY[intensity]
    else:
        raise ValueError(f"unknown intensity {intensity!r}; choose one of {list(INTENSITY) + ['custom']}")
    return CloakSettings(steps=RENDER_QUALITY[render_quality], robustness=robustness, budget=budget, **level)


def check_images(images: torch.Tensor, encoder: EncoderEnsemble, what: str = "image") -> None:
    """Clear errors for input that cannot be cloaked."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what}: expected an image tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what}: expected RGB images shaped [B, 3, H, W], got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: the batch is empty; connect at least one image")
    h, w = images.shape[-2:]
    if min(h, w) < encoder.min_size:
        raise ValueError(f"{what}: {w}x{h} is smaller than this encoder can take; images need at least "
                         f"{encoder.min_size} px on each side: upscale it first")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what}: contains NaN or infinite values")


def padder(h: int, w: int, multiple: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pad bottom/right (replicate) up to the encoder's multiple; identity when already aligned."""
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return lambda x: x
    return lambda x: F.pad(x, (0, pw, 0, ph), mode="replicate")


def latent_sizes(encoder: EncoderEnsemble, padded: torch.Tensor) -> list[tuple[int, int]]:
    """Each member's latent size for ``padded`` (sides a multiple of the encoder's), from a small probe: a
    member with a whole downscale factor f makes ``H/f × W/f``; others are measured on the image itself."""
    h, w = padded.shape[-2:]
    out = []
    with torch.no_grad():
        for m in encoder.members:
            side = max(int(m.min_size), 4 * int(m.multiple))
            side = -(-side // int(m.multiple)) * int(m.multiple)
            zh = m(padded[:1, :, :side, :side] if h >= side and w >= side else padded[:1]).shape[-2]
            f = side // zh if h >= side and w >= side and zh and side % zh == 0 else 0
            out.append((h // f, w // f) if f and h % f == 0 and w % f == 0 else tuple(m(padded[:1]).shape[-2:]))
    return out


def tile_side(settings: CloakSettings, h: int, w: int, memory_tile: int | None = None,
              device_type: str = "cpu") -> int:
    """The tile side a cloak of an ``h``×``w`` image uses (0: whole image). ``memory_tile``: the largest side
    that fits the free memory (engine.estimate.max_tile_side), when known."""
    if settings.tile < 0:
        return 0
    if settings.tile > 0:
        return settings.tile if h * w > settings.tile ** 2 else 0
    auto = AUTO_TILE.get(device_type, AUTO_TILE["cpu"])
    side = auto if memory_tile is None else max(64, min(auto, int(memory_tile)))
    return side if h * w > side * side else 0


def tiled_view(encoder: EncoderEnsemble, side: int, margin: int) -> EncoderEnsemble:
    """The same ensemble, its members encoding big images tile by tile when no gradient is wanted."""
    return EncoderEnsemble([TiledEncoder(m, side, margin) for m in encoder.members], encoder.raw_weights)


@dataclass
class CloakResult:
    images: torch.Tensor         # [B, 3, H, W] cloaked, on 8-bit levels
    reports: list[dict]          # one per image: psnr, ssim, target_gain, linf_255, steps, seconds


ObjectiveFactory = Callable[[int, torch.Tensor], object]


def cloak_images(images: torch.Tensor, encoder: EncoderEnsemble, make_objective: ObjectiveFactory,
                 settings: CloakSettings, seed: int = 0,
                 on_progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_step: Callable | None = None, keep: torch.Tensor | None = None,
                 memory_tile: int | None = None) -> CloakResult:
    """Cloak each image on its own (seed ``seed + i``), so results do not depend on batch composition.

    ``make_objective(i, padded_image)`` returns the objective for image ``i`` (see engine.objectives).
    ``on_progress(done, total)`` counts optimisation steps over the whole batch.
    ``keep`` (optional, ``[B, 1, H, W]`` bool): pixels where it is False are returned exactly as given (e.g. the
    fully transparent pixels of an RGBA image).
    ``memory_tile``: the largest tile side the free memory allows (engine.estimate.max_tile_side); big images
    are cloaked in tiles (engine.tiling, ``settings.tile``), the report says how many.
    """
    check_images(images, encoder)
    if keep is not None and (keep.ndim != 4 or keep.shape[1] != 1 or keep.shape[0] != images.shape[0]
                             or keep.shape[-2:] != images.shape[-2:]):
        raise ValueError(f"keep mask {list(keep.shape)} does not fit images {list(images.shape)}: expected "
                         f"[{images.shape[0]}, 1, {images.shape[-2]}, {images.shape[-1]}]")
    if hasattr(encoder, "prepare"):
        encoder.prepare()
    b, _, h, w = images.shape
    eot = ROBUSTNESS_LEVELS[settings.robustness]
    total = b * settings.steps
    out, reports = [], []
    for i in range(b):
        start = time.perf_counter()
        x = images[i:i + 1].detach().float().cpu()
        device = encoder.members[0].device
        x = x.to(device)
        k_i = None if keep is None else keep[i:i + 1].to(device)
        done_before = i * settings.steps
        res, objective, budget, tiles, pad = _optimise_image(
            x, i, encoder, make_objective, settings, eot, settings.steps, settings.lr, seed + i, k_i, memory_tile,
            on_progress, on_step, should_stop, done_before, total)
        steps_run = res.steps_run
        x_adv = quantize_to_8bit(x, x + res.delta, budget.caps)
        x_adv, kept = shrink_to_floors(x, x_adv, budget.caps, settings.min_ssim, settings.min_psnr)
        if keep is not None:  # exactly as given there (rounding to 8-bit levels would move off-grid values)
            x_adv = torch.where(k_i.bool(), x_adv, x)
        with torch.no_grad():
            d0 = getattr(objective, "_d0", None)  # the calibration's distances of the original image
            gain = metrics.target_gain(objective.distances(pad(x)) if d0 is None else d0,
                                       objective.distances(pad(x_adv)))
        reports.append({
            "psnr": float(metrics.psnr(x_adv, x)[0]),
            "ssim": float(metrics.ssim(x_adv, x)[0]),
            "target_gain": float(gain[0]),
            "linf_255": float((x_adv - x).abs().max() * 255),
            "steps": steps_run,
            "floor_scale": kept,
            "tiles": len(tiles) or 1,
            "seconds": time.perf_counter() - start,
        })
        if on_progress is not None and steps_run < settings.steps:
            on_progress(done_before + settings.steps, total)
        out.append(x_adv.cpu())
    return CloakResult(torch.cat(out, 0), reports)


def _optimise_image(x, i, encoder, make_objective, settings, eot, steps, lr, seed, keep, memory_tile,
               on_progress, on_step, should_stop, done_before, total):
    """One optimisation of image ``x`` (``[1, 3, H, W]``, on its device): objective, tiles, budget, precision,
    EOT; returns ``(OptimizeResult, objective, budget, tiles, pad)``."""
    pad = padder(*x.shape[-2:], encoder.multiple)
    side = tile_side(settings, *pad(x).shape[-2:], memory_tile, x.device.type)
    tiles = plan_tiles(*pad(x).shape[-2:], side, settings.margin, encoder.multiple) if side else []
    objective = make_objective(i, pad(x))
    if tiles and not hasattr(objective, "region_loss"):
        logging.info("cloak: %s cannot be tiled; image %d runs whole", type(objective).__name__, i)
        tiles = []
    if tiles and hasattr(objective, "encoder"):  # calibration and the report encode tile by tile too
        objective.encoder = tiled_view(objective.encoder, side, max(settings.margin, REPORT_MARGIN))
    objective.calibrate(pad(x))
    budget = settings.make_budget()
    if keep is not None:
        budget = Frozen(budget, keep)

    def step_cb(step, steps_, loss, delta):
        if on_progress is not None:
            on_progress(done_before + step, total)
        if on_step is not None:
            on_step(step, steps_, loss, delta)

    device = x.device
    calibrated = getattr(objective, "encoder", encoder)
    fast = autocast_members(calibrated.members, settings.precision, device)
    if hasattr(objective, "encoder"):
        objective.encoder = EncoderEnsemble(fast, calibrated.raw_weights)
    step_eot = eot
    m_rt = next((m for m in fast if getattr(m, "decode", None) is not None), None)
    if eot is not None and m_rt is not None and settings.roundtrip_p > 0:
        # the encoder came with its decoder: also survive a round trip through it (a purification attackers use)
        step_eot = WithRoundTrip(eot, lambda p, m=m_rt: m.decode(m(p)), settings.roundtrip_p)
    try:
        res = optimize(x, objective.loss, budget, steps, seed=seed, transforms=step_eot, view=pad,
                       step_rule=settings.step_rule, lr=lr, lr_final=settings.lr_final,
                       patience=settings.patience, on_step=step_cb, should_stop=should_stop,
                       region_grad=TiledGradient(objective, tiles, should_stop=should_stop) if tiles else None)
    finally:
        if hasattr(objective, "encoder"):
            objective.encoder = calibrated
    return res, objective, budget, tiles, pad


def shrink_to_floors(x: torch.Tensor, x_adv: torch.Tensor, caps: torch.Tensor, min_ssim: float | None,
                     min_psnr: float | None = None, iters: int = 10) -> tuple[torch.Tensor, float]:
    """Scale the change of one image down (bisection on the scale) until SSIM ≥ ``min_ssim`` and
    PSNR ≥ ``min_psnr`` hold on the 8-bit image (rounding can cost a few hundredths of a dB; SSIM floors act
    on images with large smooth or dark areas). A scaled-down change stays inside every budget and is
    re-rounded to 8-bit levels. Returns ``(image, scale)``; scale 1.0 when the floors already hold.
    """
    def ok(candidate):
        if min_psnr is not None and float(metrics.psnr(candidate, x)[0]) < min_psnr:
            return False
        return min_ssim is None or float(metrics.ssim(candidate, x)[0]) >= min_ssim

    if ok(x_adv):
        return x_adv, 1.0
    delta, lo, hi, best = x_adv - x, 0.0, 1.0, x
    for _ in range(iters):
        mid = (lo + hi) / 2
        candidate = quantize_to_8bit(x, x + mid * delta, caps)
        if ok(candidate):
            lo, best = mid, candidate
        else:
            hi = mid
    return best, lo


def reference_settings(eps: float, steps: int) -> CloakSettings:
    """The plain reference loop: PhotoGuard-style L∞ sign-gradient PGD, step ε/3 decaying to ε/300, no EOT."""
    return CloakSettings(eps=eps, budget="linf", min_psnr=None, steps=steps, robustness="off",
                         step_rule="sign", lr=1 / 3, lr_final=1 / 300)


# An image counts as unprotected when the floors kept less than MIN_FLOOR_SCALE of its change, no pixel changed,
# or its latent moved less than MIN_TARGET_GAIN of the way to the target (RobustnessCheck's "no cloak" level).
MIN_FLOOR_SCALE = 0.01
MIN_TARGET_GAIN = 0.01


def unprotected_reason(report: dict) -> str | None:
    """Why one image's cloak does not protect it (None when it does): no change at all, a NaN/inf figure,
    the floors scaling the change to (almost) nothing, or a latent that did not move toward the target."""
    gain, linf = report.get("target_gain", float("nan")), report.get("linf_255", 0.0)
    if not (math.isfinite(float(gain)) and math.isfinite(float(linf))):
        return "its target gain or change is NaN/infinite (a NaN or infinite target or input?)"
    if report.get("floor_scale", 1.0) < MIN_FLOOR_SCALE:
        return (f"the intensity's SSIM/PSNR floor scaled its change to {report['floor_scale']:.2f} "
                "(flat, very dark or very bright image?): try intensity high or custom")
    if linf <= 0:
        return "no pixel changed (nothing the budget allowed moved the encoder)"
    if gain < MIN_TARGET_GAIN:
        return (f"its latent barely moved toward the target (target gain {gain:.3f} < {MIN_TARGET_GAIN}; flat or "
                "tiny image?): try intensity high, render quality slowest or a larger image")
    return None


def protection_warning(reports: list[dict]) -> str | None:
    """One line naming every image that went out unprotected, and why; None when every image is protected."""
    bad = [(i, why) for i, r in enumerate(reports) if (why := unprotected_reason(r)) is not None]
    if not bad:
        return None
    return (f"WARNING: {len(bad)} of {len(reports)} image(s) NOT protected: "
            + "; ".join(f"image {i}: {why}" for i, why in bad))


def format_report(reports: list[dict], title: str, notes: list[str] | None = None) -> str:
    """A short human-readable report, one line per image. When any image went out unprotected the FIRST
    line says so (and it is logged as a warning): a node either protects or says loudly that it did not.
    ``notes`` (e.g. the cost estimate) follow the title."""
    warning = protection_warning(reports)
    if warning is not None:
        logging.warning("%s | %s", title.split(" |")[0], warning)
    lines = ([warning] if warning else []) + [title] + list(notes or [])
    for i, r in enumerate(reports):
        shrunk = (f", change scaled to {r['floor_scale']:.2f} to keep the preset's SSIM/PSNR floor"
                  if r.get("floor_scale", 1.0) < 1.0 else "")
        shrunk = (f", in {r['tiles']} tiles" if r.get("tiles", 1) > 1 else "") + shrunk
        lines.append(f"image {i}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, target gain "
                     f"{r['target_gain']:.3f}, max change {r['linf_255']:.0f}/255, {r['steps']} steps, "
                     f"{r['seconds']:.1f} s{shrunk}")
    return "\n\n".join(lines)  # blank lines: ComfyUI's Preview Any renders Markdown, which joins single lines


__all__ = ["CloakSettings", "INTENSITY", "RENDER_QUALITY", "settings_for", "cloak_images", "CloakResult",
           "reference_settings", "shrink_to_floors", "format_report", "protection_warning", "unprotected_reason",
           "check_images", "padder", "latent_sizes"]
