"""One cloak job: a batch of images, an encoder, settings; checked, planned and run once, reported once.

Every cloak goes through here: GlazePerturb, NightshadePoison (engine.nightshade.poison), the benches. The order
is fixed, so each value is made once and passed down:

1. ``CloakJob(images, encoder, settings, keep)``: the images are checked, the encoder prepared (loaded onto its
   device), the padding and the EOT chosen;
2. ``job.plan(free_bytes)``: the encoder is probed once, and from the padded image size and the free memory (a
   number the host passes in) come the tile side every image uses and the cost estimate; a job that cannot fit
   even in small tiles is refused here, before any work;
3. ``job.run(make_objective, seed, hooks)``: one optimisation per image (seed ``seed + i``, so results do not
   depend on the batch), 8-bit rounding, the SSIM/PSNR floors, the per-image report figures;
4. ``job.report(result, title, notes)``: the text report, the estimate line first.

``make_objective(i, padded_image)`` returns image i's objective (engine.objectives contract). The objective is
never changed by a run: the passes it should use (tiled for calibration and reports, autocast for the
optimisation) are passed to it. Images are ``[B, 3, H, W]`` in 0..1.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable

import torch

from . import metrics
from .budgets import Frozen, quantize_to_8bit
from .cloak import (MIN_TILE, CloakResult, CloakSettings, check_images, format_report, latent_sizes, padder,
                    shrink_to_floors, tile_side)
from .encoders import EncoderEnsemble, as_ensemble
from .estimate import (CostEstimate, Passes, batch_bytes, estimate_cost, fits_in_memory, long_job_advice,
                       max_tile_side, probe, refusal_message)
from .objectives import DecodedLatentMatch, LatentMatch, StyleTarget, objective_for_target
from .optimize import Hooks, optimize
from .perfect_mimic import decoder_member, readout
from .precision import autocast_members
from .tiling import REPORT_MARGIN, TiledEncoder, TiledGradient, plan_tiles
from .transforms import ROBUSTNESS_LEVELS, WithRoundTrip

ObjectiveFactory = Callable[[int, torch.Tensor], object]


def glaze_objectives(encoder: EncoderEnsemble, target: StyleTarget, images: int | None = None) -> ObjectiveFactory:
    """GlazePerturb's objectives: image i pulled toward its style target (engine.objectives.objective_for_target).
    ``images``: the batch size, checked against a per-image target's count."""
    if not isinstance(target, StyleTarget):
        raise TypeError(f"style_target: expected a STYLE_TARGET from StyleTargetLatents, got {type(target).__name__}")
    if images is not None:
        target.check_batch(images)
    return lambda i, padded: objective_for_target(encoder, target, i, latent_sizes(encoder, padded))


def tiled_view(encoder: EncoderEnsemble, side: int, margin: int) -> EncoderEnsemble:
    """The same ensemble, its members encoding big images tile by tile when no gradient is wanted."""
    return EncoderEnsemble([TiledEncoder(m, side, margin) for m in encoder.members], encoder.raw_weights)


def passes_of(eot, margin: int) -> Passes:
    """The passes per step an EOT makes (None: robustness off, one clean pass)."""
    if eot is None:
        return Passes(margin=margin, eot=False)
    return Passes(eot_samples=eot.samples, clean_pass=eot.clean_weight > 0, margin=margin)


class CloakJob:
    """A batch of same-size images to cloak against one encoder (ensemble) with one set of settings.

    ``keep`` (optional, ``[B, 1, H, W]`` bool): pixels where it is False are returned exactly as given (e.g. the
    fully transparent pixels of an RGBA image).
    """

    def __init__(self, images: torch.Tensor, encoder, settings: CloakSettings, keep: torch.Tensor | None = None):
        encoder = as_ensemble(encoder)
        check_images(images, encoder)
        if keep is not None and (keep.ndim != 4 or keep.shape[1] != 1 or keep.shape[0] != images.shape[0]
                                 or keep.shape[-2:] != images.shape[-2:]):
            raise ValueError(f"keep mask {list(keep.shape)} does not fit images {list(images.shape)}: expected "
                             f"[{images.shape[0]}, 1, {images.shape[-2]}, {images.shape[-1]}]")
        encoder.prepare()
        self.images, self.encoder, self.settings, self.keep = images, encoder, settings, keep
        self.device = encoder.members[0].device
        h, w = images.shape[-2:]
        self.size = (int(h), int(w))
        self.pad = padder(h, w, encoder.multiple)
        self.padded_size = (-(-int(h) // encoder.multiple) * encoder.multiple,
                            -(-int(w) // encoder.multiple) * encoder.multiple)
        self.eot = ROBUSTNESS_LEVELS[settings.robustness]
        self.passes = dataclasses.replace(passes_of(self.eot, settings.margin), full_visibility=(
            settings.visibility_charged and settings.visibility_measure == "full"))
        # the tile side every image uses (0: whole); plan() narrows it to what the free memory allows
        self.tile = tile_side(settings, *self.padded_size, None, self.device.type)
        self.estimate: CostEstimate | None = None
        self.objective_note: str | None = None  # which objective ran, for the report (set by run)
        has_decoder = any(m.decode is not None for m in encoder.members)
        # whether the passes decode (the decoded objective, where a member carries its decoder)
        self.decoded = settings.decoded_weight + settings.decoded_style > 0 and has_decoder
        # share of the EOT draws that are a round trip through a member's decoder (each about one more pass)
        self.roundtrip = settings.roundtrip_p if self.eot is not None and has_decoder else 0.0

    def padded(self) -> torch.Tensor:
        """All images padded to the encoder's multiple (float32, where they were given)."""
        return self.pad(self.images.float())

    def plan(self, free_bytes: float) -> CostEstimate:
        """Probe the encoder, choose the tile side that ``free_bytes`` allows and estimate memory and time; refuse
        (ValueError, saying what to do) a job that cannot fit even in 64 px tiles."""
        s, ph, pw, b = self.settings, *self.padded_size, self.images.shape[0]
        shared = self.device.type == "cpu"  # the batch's copies live in CPU memory: on a CPU, beside the work
        decoded = self.decoded
        probed = probe(self.encoder, precision=s.precision, decoded=decoded, styled=s.decoded_style > 0)
        if decoded and s.decoded_every > 1:  # the decoder runs on one pass in decoded_every (its memory on each)
            plain = probe(self.encoder, precision=s.precision)
            probed = dataclasses.replace(probed, seconds_per_pixel=plain.seconds_per_pixel + (
                probed.seconds_per_pixel - plain.seconds_per_pixel) / s.decoded_every)
        memory_tile = max_tile_side(probed, ph, pw, free_bytes, self.passes, self.encoder.multiple,
                                    batch_bytes(ph, pw, b) if shared else 0.0)
        self.tile = tile_side(s, ph, pw, memory_tile or MIN_TILE, self.device.type)
        passes = dataclasses.replace(self.passes, tile=self.tile, margin=s.margin if self.tile else 0,
                                     roundtrip=self.roundtrip)
        self.estimate = estimate_cost(probed, ph, pw, b, s.steps, self.encoder.multiple, passes, shared)
        if not memory_tile or not fits_in_memory(self.estimate, free_bytes):
            raise ValueError(refusal_message(self.estimate, free_bytes, *self.size))
        return self.estimate

    def run(self, make_objective: ObjectiveFactory, seed: int = 0, hooks: Hooks = Hooks()) -> CloakResult:
        """Cloak each image on its own (seed ``seed + i``); ``hooks.on_progress`` counts steps over the batch."""
        s = self.settings
        b = self.images.shape[0]
        total = b * s.steps
        out, reports = [], []
        for i in range(b):
            start = time.perf_counter()
            x = self.images[i:i + 1].detach().float().cpu().to(self.device)
            keep = None if self.keep is None else self.keep[i:i + 1].to(self.device)
            res, objective, budget, scoring, tiles = self._optimise(i, x, keep, make_objective, seed + i, hooks)
            x_adv = quantize_to_8bit(x, x + res.delta, budget.caps)
            x_adv, kept = shrink_to_floors(x, x_adv, budget.caps, s.min_ssim, s.min_psnr)
            if keep is not None:  # exactly as given there (rounding to 8-bit levels would move off-grid values)
                x_adv = torch.where(keep.bool(), x_adv, x)
            with torch.no_grad():
                gain = metrics.target_gain(objective.start, objective.distances(self.pad(x_adv), encoder=scoring))
            if not self.objective_note:
                self.objective_note = describe_objective(objective) + (
                    f"; visibility 1 - HaarPSI ({s.visibility_measure}) x {s.visibility_weight:g}"
                    if s.visibility_charged else "")
            reports.append({**self._mimic(objective, scoring, x, x_adv),
                "psnr": float(metrics.psnr(x_adv, x)[0]),
                "ssim": float(metrics.ssim(x_adv, x)[0]),
                **{k: v[0] for k, v in metrics.visibility(x, x_adv).items()},
                "target_gain": float(gain[0]),
                "linf_255": float((x_adv - x).abs().max() * 255),
                "steps": res.steps_run,
                "floor_scale": kept,
                "tiles": len(tiles) or 1,
                "seconds": time.perf_counter() - start,
            })
            if hooks.on_progress is not None and res.steps_run < s.steps:
                hooks.on_progress((i + 1) * s.steps, total)
            out.append(x_adv.cpu())
        return CloakResult(torch.cat(out, 0), reports)

    def _optimise(self, i, x, keep, make_objective, seed, hooks):
        """One optimisation of image ``i`` (``x`` ``[1, 3, H, W]`` on the job's device). Returns ``(OptimizeResult,
        objective, budget, scoring encoder, tiles)``; the scoring encoder is the one calibration used."""
        s, padded = self.settings, self.pad(x)
        tiles = plan_tiles(*self.padded_size, self.tile, s.margin, self.encoder.multiple) if self.tile else []
        objective = make_objective(i, padded)
        if s.decoded_weight + s.decoded_style > 0 and type(objective) is LatentMatch \
                and any(m.decode is not None for m in objective.encoder.members):
            objective = DecodedLatentMatch(objective.encoder, objective.targets, s.decoded_weight, s.decoded_every,
                                           s.decoded_style)
        if tiles and not objective.tileable:
            logging.info("cloak: %s cannot be tiled; image %d runs whole", type(objective).__name__, i)
            tiles = []
        # calibration and the report encode tile by tile too; every pass, with gradient or without (calibration, the
        # report), runs at the job's pass precision (autocast to bf16 where the CPU computes it natively)
        tiled = tiled_view(objective.encoder, self.tile, max(s.margin, REPORT_MARGIN)) if tiles else objective.encoder
        fast = scoring = EncoderEnsemble(autocast_members(tiled.members, s.precision, x.device), tiled.raw_weights)
        objective.calibrate(padded, encoder=scoring)
        budget = s.make_budget()
        if keep is not None:
            budget = Frozen(budget, keep)
        transforms = self.eot
        round_trip = next((m for m in fast.members if m.decode is not None), None)
        if self.roundtrip > 0 and round_trip is not None:
            # the encoder came with its decoder: also survive a round trip through it (a purification attackers use)
            transforms = WithRoundTrip(transforms, lambda p, m=round_trip: m.decode(m(p)), s.roundtrip_p)
        done_before, total = i * s.steps, self.images.shape[0] * s.steps

        def on_step(step, steps, loss, delta):
            if hooks.on_progress is not None:
                hooks.on_progress(done_before + step, total)
            if hooks.on_step is not None:
                hooks.on_step(step, steps, loss, delta)

        loss = (TiledGradient(objective, tiles, fast, hooks.should_stop) if tiles
                else functools.partial(objective.loss, encoder=fast))
        init = self._warm_start(x, objective, budget) if s.warm_start else None
        res = optimize(x, loss, budget, dataclasses.replace(s.schedule(), seed=seed), transforms=transforms,
                       view=self.pad, hooks=Hooks(should_stop=hooks.should_stop, on_step=on_step), init=init)
        return res, objective, budget, scoring, tiles

    def _mimic(self, objective, scoring, x, x_adv) -> dict:
        """The perfect-mimic readout (engine.perfect_mimic) of one image through the first member that carries its
        decoder, toward the objective's target latent (a LatentMatch's target, a NoiseMatch's anchor); {} where no
        member has a decoder or the objective has no target latent (style statistics)."""
        k = decoder_member(scoring)
        if k is None:
            return {}
        member, padded = scoring.members[k], self.pad(x)
        with torch.no_grad():
            if isinstance(objective, LatentMatch):
                z0 = objective.original_latents[k]
                target = objective.target_for(k, z0, None)
            elif getattr(objective, "anchors", None) is not None:
                z0, target = member(padded), objective.anchors[k]
            else:
                return {}
        decoded = getattr(objective, "decoded_pictures", {}).get(k)  # calibration's D(z0), D(t): not decoded twice
        return readout(member, z0, self.pad(x_adv), target, self.size, decoded) or {}

    @staticmethod
    def _warm_start(x, objective, budget):
        """The first member's amortised start toward this objective's target (None: it has none, or the objective
        has no per-position target latents), from the original's latents that calibration kept."""
        k = next((k for k, m in enumerate(objective.encoder.members) if getattr(m, "warm_start", None) is not None),
                 None)
        if k is None or not isinstance(objective, LatentMatch):
            return None
        with torch.no_grad():
            z = objective.original_latents[k]
            t = objective.target_for(k, z, None)
            budget.setup(x)
            return objective.encoder.members[k].warm_start.to(z.device).start(z, t, budget.caps)

    def report(self, result: CloakResult, title: str, notes: list[str] | None = None) -> str:
        """The report: a warning first when an image went out unprotected, the title, the estimate, ``notes``,
        then a line per image."""
        advice = None if self.estimate is None else long_job_advice(self.estimate, self.decoded)
        lines = ([self.estimate.describe()] if self.estimate is not None else []) + ([advice] if advice else []) \
            + ([self.objective_note] if self.objective_note else []) + list(notes or [])
        return format_report(result.reports, title, lines, self.settings.typical_gain)


def describe_objective(objective) -> str:
    """One line: which objective ran against which member (the decoded terms run only where a member carries its
    decoder, and the style term only where its encoder has style layers)."""
    kind = type(objective).__name__
    if isinstance(objective, DecodedLatentMatch):
        parts = []
        for k, m in enumerate(objective.encoder.members):
            if m.decode is None:
                parts.append(f"{m.name}: latent distance (no decoder)")
                continue
            style = objective.style if objective.style_net(k) is not None else 0.0
            terms = [f"decoded latent {objective.weight:.2f}"] + ([f"decoded style {style:.2f}"] if style else []) \
                + [f"latent {1 - objective.weight - style:.2f}"]
            parts.append(f"{m.name}: " + " + ".join(terms))
        return "objective: " + "; ".join(parts)
    if kind == "LatentMatch":
        decoders = any(m.decode is not None for m in objective.encoder.members)
        return "objective: latent distance" + (" (no decoded terms: decoded_objective off, or a poison)"
                                               if decoders else " (no member carries a decoder)")
    if kind == "LatentStyleStats":
        return "objective: latent style statistics (style_stats target: position-free, no decoded objective)"
    if kind == "NoiseMatch":
        return "objective: predicted noise of the diffusion model"
    return f"objective: {kind}"


def cloak_images(images: torch.Tensor, encoder, make_objective: ObjectiveFactory, settings: CloakSettings,
                 seed: int = 0, hooks: Hooks = Hooks(), keep: torch.Tensor | None = None,
                 free_bytes: float | None = None) -> CloakResult:
    """A whole job in one call (benches, tests, scripts): planned against ``free_bytes`` when given."""
    job = CloakJob(images, encoder, settings, keep)
    if free_bytes is not None:
        job.plan(free_bytes)
    return job.run(make_objective, seed, hooks)


__all__ = ["CloakJob", "cloak_images", "glaze_objectives", "tiled_view", "passes_of", "ObjectiveFactory",
           "describe_objective"]
