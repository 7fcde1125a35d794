"""Attacks on cloaks, and how much of a cloak survives them (the engine of RobustnessCheck).

Threat model: whoever scrapes a cloaked image may re-save, resize, blur, crop or screenshot it before
training (on purpose or not), or try to wash the cloak out: a VAE encode/decode round trip, IMPRESS
(Cao et al., NeurIPS 2023: optimise x' so the autoencoder reconstructs it, staying near the image) and
DiffPure / noisy upscaling (Nie et al., ICML 2022; Hönig et al., ICLR 2025: noise to a timestep, then
denoise with a diffusion model; it defeated Glaze, Mist and Anti-DreamBooth).

An attack is written ``key`` or ``key:value`` (``value`` = its strength, see :data:`CATALOGUE`); a list is
comma- or newline-separated (:func:`parse_attacks`). Geometric and filtering attacks reuse the functions of
:mod:`engine.transforms` that the cloak's EOT uses; JPEG and WebP use the real Pillow codecs, as an
attacker does. Every attacked image is rounded to 8 bits (it is saved before anyone trains on it).

Survival (:func:`check_survival`): the target gain ``1 - d(E(A(x')), t) / d(E(A(x)), t)`` of the attacked
cloaked image ``A(x')`` against the *same attack applied to the original* ``A(x)`` (same seed, same
geometry), so an attack that by itself moves the image toward the target is not counted as the cloak's
work; ``kept`` is the mean attacked gain over the mean unattacked gain. Pixels are ``[B, 3, H, W]`` 0..1.
"""
from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import metrics, transforms as T
from .budgets import LinfBox
from .cloak import padder
from .job import glaze_objectives
from .nightshade import plan_poison
from .objectives import StyleTarget
from .optimize import Cancelled, Hooks, Schedule, optimize

Warp = Callable[[torch.Tensor], torch.Tensor]

HOLDS, BROKEN = 0.7, 0.3          # kept share: >= HOLDS holds, < BROKEN broken, between: weakened
MIN_CLEAN_GAIN = 0.01             # below this unattacked gain there is no cloak to keep
VERDICT_RULE = (f"holds: keeps >= {HOLDS:.0%} of the unattacked target gain; weakened: {BROKEN:.0%}-{HOLDS:.0%}; "
                f"broken: < {BROKEN:.0%}; no cloak: the unattacked gain is below {MIN_CLEAN_GAIN}")

# IMPRESS defaults: L-inf box around the attacked image, weight of staying near it, Adam step scale.
IMPRESS_EPS, IMPRESS_WEIGHT, IMPRESS_LR = 16 / 255, 0.5, 0.1
NOISY_UPSCALE_SIGMA, NOISY_UPSCALE_SCALE = 0.05, 0.5


@dataclass
class AttackContext:
    """What the heavier attacks need, as callables (the node builds them from ComfyUI objects).

    ``autoencode(pixels) -> pixels``  ``D(E(x))``, differentiable; given sides a multiple of ``multiple``;
    ``diffuse(pixels, strength, seed) -> pixels``  noise to ``strength`` (0..1 of the schedule) and denoise;
    ``should_stop()`` checked between attacks and at every IMPRESS step;
    ``on_attack(done, total, label)`` called as each attack ends (progress);
    ``diffuse_label``  what ``diffuse`` is, shown on its rows (e.g. "miniature purifier");
    ``no_diffuse``     why there is no ``diffuse``, shown on the skipped rows.
    """

    autoencode: Callable[[torch.Tensor], torch.Tensor] | None = None
    diffuse: Callable[[torch.Tensor, float, int], torch.Tensor] | None = None
    multiple: int = 8
    should_stop: Callable[[], bool] | None = None
    on_attack: Callable[[int, int, str], None] | None = None
    diffuse_label: str = ""
    no_diffuse: str = "needs a diffusion model: wire vae, model and positive"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def pil_codec(x: torch.Tensor, fmt: str, quality: float, **options) -> torch.Tensor:
    """Encode and decode each image with Pillow's real ``fmt`` codec ("JPEG", "WEBP") in memory;
    ``options`` go to ``Image.save`` (e.g. ``subsampling=0`` for 4:4:4 JPEG)."""
    from PIL import Image
    out = []
    for img in x.detach():
        arr = (img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, quality=int(round(quality)), **options)
        with Image.open(io.BytesIO(buf.getvalue())) as back:
            out.append(torch.from_numpy(np.asarray(back.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out).to(x.device)


def _padded(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Apply ``fn`` to ``x`` padded (replicate) to ``multiple``, cropped back to ``x``'s size."""
    h, w = x.shape[-2:]
    return fn(padder(h, w, multiple)(x))[..., :h, :w]


def _need(ctx: AttackContext, what: str):
    fn = getattr(ctx, what)
    if fn is None:
        raise ValueError(f"this attack needs {'a VAE' if what == 'autoencode' else 'a diffusion model'} "
                         f"(AttackContext.{what} is None)")
    return fn


def vae_roundtrip(x, _value, ctx, _seed):
    """``D(E(x))``: the latent a fine-tune trains on, decoded (what a VAE round trip leaves)."""
    with torch.no_grad():
        return _padded(_need(ctx, "autoencode"), x, ctx.multiple), None


def impress(x, steps, ctx, seed):
    """IMPRESS (Cao et al., NeurIPS 2023): find x' near x whose autoencoder reconstruction is itself.

    ``min ||D(E(x')) - x'||² + IMPRESS_WEIGHT·||x' - x||²`` over an L∞ box of ``IMPRESS_EPS`` around x
    (the paper bounds LPIPS instead, whose weights are not available offline), Adam via
    :func:`engine.optimize.optimize`, ``steps`` steps.
    """
    autoencode = _need(ctx, "autoencode")
    x = x.detach().float()

    def loss(pixels, _warp):
        recon = _padded(autoencode, pixels, ctx.multiple)
        return ((recon - pixels) ** 2).flatten(1).mean(1) + IMPRESS_WEIGHT * ((pixels - x) ** 2).flatten(1).mean(1)

    with torch.enable_grad():
        res = optimize(x, loss, LinfBox(IMPRESS_EPS), Schedule(int(steps), lr=IMPRESS_LR, lr_final=0.01, seed=seed),
                       hooks=Hooks(should_stop=ctx.should_stop))
    return (x + res.delta).clamp(0, 1), None


def diffpure(x, strength, ctx, seed):
    """DiffPure / img2img purification: noise to ``strength`` of the schedule, denoise (``ctx.diffuse``)."""
    with torch.no_grad():
        return _need(ctx, "diffuse")(x, float(strength), int(seed)).to(x.device, x.dtype), None


def noisy_upscale(x, strength, ctx, seed):
    """Noisy upscaling (Hönig et al., ICLR 2025), as far as no upscaler model is at hand: Gaussian noise
    (σ ``NOISY_UPSCALE_SIGMA``), a ``NOISY_UPSCALE_SCALE``× down-up resize, then diffusion denoising at
    ``strength``."""
    y = T.gaussian_noise(x, NOISY_UPSCALE_SIGMA, _generator(seed))
    return diffpure(T.resize_down_up(y, NOISY_UPSCALE_SCALE), strength, ctx, seed)


def _geometric(x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, Warp]:
    """Apply one affine to every image; the warp applies it to a latent batch of any size."""
    return T.affine(x, theta.expand(x.shape[0], 2, 3)), (lambda z: T.affine(z, theta.expand(z.shape[0], 2, 3)))


def _crop(x, keep, _ctx, _seed):
    return _geometric(x, T.crop_resize_theta(1, keep))


def _rotate(x, degrees, _ctx, _seed):
    return _geometric(x, T.rotation_theta(1, degrees, *x.shape[-2:]))


@dataclass(frozen=True)
class AttackKind:
    """One entry of the catalogue: ``run(x, value, ctx, seed) -> (pixels, warp or None)``."""

    key: str
    param: str                   # what ``value`` means ("" when the attack takes none)
    default: float | None
    lo: float | None
    hi: float | None
    label: str                   # format string over ``v``
    needs: str | None            # None, "vae" or "model"
    run: Callable
    doc: str


CATALOGUE: dict[str, AttackKind] = {k.key: k for k in (
    AttackKind("none", "", None, None, None, "none (as saved)", None, lambda x, v, c, s: (x, None),
               "no attack: the cloaked image as published"),
    AttackKind("jpeg", "quality", 75, 1, 100, "JPEG q{v:g}", None,
               lambda x, v, c, s: (pil_codec(x, "JPEG", v), None),
               "real JPEG re-save with 4:2:0 chroma subsampling (Pillow/libjpeg default, most web platforms)"),
    AttackKind("jpeg444", "quality", 95, 1, 100, "JPEG q{v:g} 4:4:4", None,
               lambda x, v, c, s: (pil_codec(x, "JPEG", v, subsampling=0), None),
               "real JPEG re-save without chroma subsampling (ImageMagick at q>=90, Photoshop)"),
    AttackKind("webp", "quality", 80, 1, 100, "WebP q{v:g}", None,
               lambda x, v, c, s: (pil_codec(x, "WEBP", v), None), "real lossy WebP re-save (Pillow)"),
    AttackKind("resize", "scale", 0.5, 0.05, 1, "resize {v:g}x down-up", None,
               lambda x, v, c, s: (T.resize_down_up(x, v), None), "downscale (antialiased), upscale back"),
    AttackKind("blur", "sigma", 1.0, 0.0, 10, "blur s={v:g}", None,
               lambda x, v, c, s: (T.gaussian_blur(x, v), None), "Gaussian blur, sigma in pixels"),
    AttackKind("noise", "sigma", 0.02, 0.0, 0.5, "noise s={v:g}", None,
               lambda x, v, c, s: (T.gaussian_noise(x, v, _generator(s)), None), "additive Gaussian noise"),
    AttackKind("crop", "keep", 0.9, 0.3, 1, "crop {v:.0%} + resize", None, _crop,
               "centre crop keeping this fraction of each side, resized back"),
    AttackKind("rotate", "degrees", 3.0, -45, 45, "rotate {v:g} deg", None, _rotate,
               "rotation about the centre (reflected borders)"),
    AttackKind("screenshot", "scale", 0.8, 0.25, 1, "screenshot {v:g}x", None,
               lambda x, v, c, s: (T.screenshot(x, v), None), "display at scale, capture, sharpen, 8-bit"),
    AttackKind("vae", "", None, None, None, "VAE round trip", "vae", vae_roundtrip, "encode and decode with the VAE"),
    AttackKind("impress", "steps", 50, 1, 5000, "IMPRESS {v:g} steps", "vae", impress,
               "consistency purification against the VAE"),
    AttackKind("diffpure", "strength", 0.3, 0.01, 1, "DiffPure t={v:g}", "model", diffpure,
               "noise to this fraction of the schedule, denoise with the model"),
    AttackKind("noisy_upscale", "strength", 0.3, 0.01, 1, "noisy upscale t={v:g}", "model", noisy_upscale,
               "noise + down-up resize, then diffusion denoising"),
)}

DEFAULT_ATTACKS = ("none, jpeg:95, jpeg:75, jpeg:50, jpeg444:95, webp:80, resize:0.5, resize:0.25, blur:1, blur:2, "
                   "noise:0.02, noise:0.05, crop:0.9, rotate:3, screenshot:0.8, vae, impress:50, "
                   "diffpure:0.3, noisy_upscale:0.3")


@dataclass(frozen=True)
class Attack:
    kind: AttackKind
    value: float | None

    @property
    def spec(self) -> str:
        return self.kind.key if self.value is None else f"{self.kind.key}:{self.value:g}"

    @property
    def label(self) -> str:
        return self.kind.label.format(v=self.value) if self.value is not None else self.kind.label

    def __call__(self, x: torch.Tensor, ctx: AttackContext, seed: int) -> tuple[torch.Tensor, Warp | None]:
        y, warp = self.kind.run(x.float(), self.value, ctx, seed)
        # saved as 8 bits before anyone trains on it (exact rounding: no gradient is needed here)
        return (torch.round(y.detach().clamp(0, 1) * 255) / 255), warp


def parse_attacks(text: str) -> list[Attack]:
    """``"jpeg:75, blur:2\\nvae"`` → attacks (comma/semicolon/newline separated; ``#`` starts a comment)."""
    if not isinstance(text, str):
        raise TypeError(f"attacks: expected a string such as {DEFAULT_ATTACKS[:30]!r}, got {type(text).__name__}")
    tokens = [t.strip() for line in text.splitlines() for t in re.split(r"[,;]", line.split("#")[0])]
    attacks, seen, problems = [], set(), []
    for tok in filter(None, tokens):
        try:
            attack = _parse_one(tok)
        except ValueError as e:
            if str(e) not in problems:  # every bad token named once, in one error
                problems.append(str(e))
            continue
        if attack.spec not in seen:
            seen.add(attack.spec)
            attacks.append(attack)
    if problems:
        raise ValueError(f"{len(problems)} bad attack(s): " + "; ".join(problems)
                         + f". Known: {', '.join(CATALOGUE)}")
    if not attacks:
        raise ValueError(f"no attacks given; for example: {DEFAULT_ATTACKS}")
    return attacks


def _parse_one(tok: str) -> Attack:
    shown = tok if len(tok) <= 60 else tok[:57] + "..."
    key, _, raw = (s.strip() for s in tok.partition(":"))
    kind = CATALOGUE.get(key.lower())
    if kind is None:
        raise ValueError(f"unknown attack {shown!r}")
    if raw and not kind.param:
        raise ValueError(f"attack {shown!r}: {key} takes no strength; write just {key!r}")
    try:
        value = float(raw) if raw else kind.default
    except ValueError:
        raise ValueError(f"attack {shown!r}: the {kind.param} must be a number") from None
    if value is not None and not (math.isfinite(value) and kind.lo <= value <= kind.hi):
        raise ValueError(f"attack {shown!r}: {kind.param} must be in [{kind.lo:g}, {kind.hi:g}]")
    return Attack(kind, value)


def verdict(kept: float | None) -> str:
    if kept is None:
        return "no cloak"
    return "holds" if kept >= HOLDS else "weakened" if kept >= BROKEN else "broken"


@dataclass
class Outcome:
    """One attack's result over a batch (lists are per image)."""

    spec: str
    label: str
    status: str = "ok"           # "ok" | "skipped"
    reason: str = ""
    gain: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    haarpsi: list[float] = field(default_factory=list)
    gmsd: list[float] = field(default_factory=list)
    kept: float | None = None
    verdict: str = "skipped"
    seconds: float = 0.0
    images: torch.Tensor | None = None  # attacked cloaked images [B, 3, H, W]

    def as_dict(self) -> dict:
        mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
        return {"attack": self.spec, "label": self.label, "status": self.status, "reason": self.reason,
                "kept": self.kept, "verdict": self.verdict, "gain": mean(self.gain), "psnr": mean(self.psnr),
                "ssim": mean(self.ssim), "haarpsi": mean(self.haarpsi), "gmsd": mean(self.gmsd),
                "gain_per_image": self.gain, "psnr_per_image": self.psnr, "ssim_per_image": self.ssim,
                "haarpsi_per_image": self.haarpsi, "gmsd_per_image": self.gmsd, "seconds": round(self.seconds, 3)}


@dataclass
class SurvivalReport:
    clean_gain: list[float]
    outcomes: list[Outcome]
    title: str = "RobustnessCheck"
    # what a person sees of the unattacked cloak (engine.metrics.visibility: haarpsi, gmsd, low_freq per image)
    seen: dict = field(default_factory=dict)

    @property
    def mean_clean_gain(self) -> float:
        return sum(self.clean_gain) / len(self.clean_gain)

    def as_dict(self) -> dict:
        return {"title": self.title, "images": len(self.clean_gain), "clean_gain": self.mean_clean_gain,
                "clean_gain_per_image": self.clean_gain, "visibility": self.seen,
                "thresholds": {"holds": HOLDS, "broken": BROKEN, "min_clean_gain": MIN_CLEAN_GAIN},
                "verdict_rule": VERDICT_RULE, "attacks": [o.as_dict() for o in self.outcomes]}

    def table(self) -> str:
        """The survival table as Markdown (a title paragraph, a table, the rules): ComfyUI's Preview Any renders it
        as a table; blank lines keep the paragraphs apart (Markdown joins single lines)."""
        cell = lambda v: str(v).replace("|", "/")  # noqa: E731
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        seen = (f" · HaarPSI {mean(self.seen['haarpsi']):.3f}, GMSD {mean(self.seen['gmsd']):.4f}"
                if self.seen.get("haarpsi") else "")
        lines = [f"**{self.title}** · {len(self.clean_gain)} image(s) · unattacked target gain "
                 f"{self.mean_clean_gain:.3f}{seen}", "",
                 "| attack | kept | gain | PSNR | SSIM | HaarPSI | GMSD | verdict |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for o in self.outcomes:
            d = o.as_dict()
            if o.status != "ok":
                lines.append(f"| {cell(o.label)} | - | - | - | - | - | - | skipped: {cell(o.reason)} |")
                continue
            kept = f"{100 * o.kept:.1f}%" if o.kept is not None else "n/a"
            lines.append(f"| {cell(o.label)} | {kept} | {d['gain']:.3f} | {d['psnr']:.2f} | {d['ssim']:.4f} | "
                         f"{d['haarpsi']:.3f} | {d['gmsd']:.4f} | {o.verdict} |")
        lines += ["", "kept = attacked gain / unattacked gain (both against the original, attacked the same way); "
                      "PSNR/SSIM/HaarPSI/GMSD: attacked cloaked image vs original (HaarPSI 1 and GMSD 0 = no visible "
                      "change)", "", VERDICT_RULE]
        return "\n".join(lines)

    def text(self) -> str:
        """The report STRING: the table, then the same figures as JSON after a ``JSON:`` line."""
        return self.table() + "\n\nJSON:\n" + json.dumps(self.as_dict(), indent=1)


def report_from_text(text: str) -> dict:
    """Parse the JSON half of :meth:`SurvivalReport.text`."""
    _, sep, body = text.partition("\nJSON:\n")
    if not sep:
        raise ValueError("not a RobustnessCheck report: no 'JSON:' section")
    return json.loads(body)


def cloak_objectives(encoder, target, original: torch.Tensor):
    """``objective_for(i, padded)``: the objectives a cloak was made with, rebuilt from what it pulled toward.

    ``target``: a :class:`engine.objectives.StyleTarget` gives GlazePerturb's objectives
    (engine.job.glaze_objectives); anchor pixels ``[N, 3, H, W]`` or latents ``[N, C, h, w]`` give
    NightshadePoison's latent form, with the same anchor pairing (whichever objective the poison was made with).
    ``original``: the uncloaked images ``[B, 3, H, W]``, already checked; the encoder prepared."""
    if isinstance(target, StyleTarget):
        return glaze_objectives(encoder, target, original.shape[0])
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a STYLE_TARGET, an IMAGE or a LATENT, got {type(target).__name__}")
    padded = padder(*original.shape[-2:], encoder.multiple)(original.float())
    return plan_poison(encoder, padded, target).objective_factory("latent")


def check_survival(original: torch.Tensor, cloaked: torch.Tensor, objective_for: Callable[[int, torch.Tensor], object],
                   attacks: list[Attack], multiple: int = 8, ctx: AttackContext | None = None, seed: int = 0,
                   title: str = "RobustnessCheck") -> SurvivalReport:
    """Run ``attacks`` on ``cloaked`` (and, paired, on ``original``) and measure what survives.

    ``objective_for(i, padded_original_i)`` returns the objective of image i (engine.objectives contract:
    ``distances(pixels, warp) -> [1, M]``); images are padded to ``multiple`` (the encoder's) for it. Attacks whose ``needs`` is not in ``ctx`` are reported as
    skipped, with the reason. ``ctx.on_attack(done, total, label)`` reports progress.
    """
    if original.shape != cloaked.shape:
        raise ValueError(f"original {list(original.shape)} and cloaked {list(cloaked.shape)} must have the same "
                         "shape: wire the image that went into the cloak node and the image that came out")
    ctx = ctx or AttackContext()
    original, cloaked = original.detach().float(), cloaked.detach().float()
    pad = padder(*original.shape[-2:], multiple)
    objectives = [objective_for(i, pad(original[i:i + 1])) for i in range(original.shape[0])]

    def gains(a: torch.Tensor, c: torch.Tensor, warp) -> list[float]:
        with torch.no_grad():
            return [float(metrics.target_gain(obj.distances(pad(a[i:i + 1]), warp),
                                              obj.distances(pad(c[i:i + 1]), warp))[0])
                    for i, obj in enumerate(objectives)]

    clean = gains(original, cloaked, None)
    g0 = sum(clean) / len(clean)
    outcomes = []
    for n, attack in enumerate(attacks):
        if ctx.should_stop is not None and ctx.should_stop():
            raise Cancelled(f"cancelled before attack {attack.spec}")
        label = f"{attack.label} ({ctx.diffuse_label})" if attack.kind.needs == "model" and ctx.diffuse_label \
            else attack.label
        out = Outcome(attack.spec, label)
        missing = {"vae": ctx.autoencode, "model": ctx.diffuse}.get(attack.kind.needs, True) is None
        if missing:
            out.status, out.reason = "skipped", ("needs a VAE: wire vae" if attack.kind.needs == "vae"
                                                 else ctx.no_diffuse)
        else:
            start = time.perf_counter()
            attacked_original, warp = attack(original, ctx, seed)
            attacked, _ = attack(cloaked, ctx, seed)
            out.gain = gains(attacked_original, attacked, warp)
            out.psnr = [float(v) for v in metrics.psnr(attacked, original)]
            out.ssim = [float(v) for v in metrics.ssim(attacked, original)]
            seen = metrics.visibility(original, attacked)
            out.haarpsi, out.gmsd = seen["haarpsi"], seen["gmsd"]
            out.kept = (sum(out.gain) / len(out.gain)) / g0 if g0 >= MIN_CLEAN_GAIN else None
            out.verdict = verdict(out.kept)
            out.images = attacked.cpu()
            out.seconds = time.perf_counter() - start
        outcomes.append(out)
        if ctx.on_attack is not None:
            ctx.on_attack(n + 1, len(attacks), attack.label)
    return SurvivalReport(clean, outcomes, title, metrics.visibility(original, cloaked))


__all__ = ["AttackContext", "cloak_objectives", "AttackKind", "Attack", "CATALOGUE", "DEFAULT_ATTACKS", "parse_attacks",
           "check_survival", "SurvivalReport", "Outcome", "report_from_text", "verdict", "pil_codec",
           "HOLDS", "BROKEN", "MIN_CLEAN_GAIN", "VERDICT_RULE"]
