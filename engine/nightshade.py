"""Nightshade-style concept poisoning (Shan et al., "Nightshade: Prompt-Specific Poisoning Attacks on
Text-to-Image Generative Models", IEEE S&P 2024) on the engine's one optimisation loop.

Threat model: an artist's images of concept A (captioned A, e.g. "a photo of a cow") are scraped to
fine-tune or train a text-to-image model. Each image gets a small perturbation so the model *sees* an
anchor image of concept B ("handbag") while the caption still says A; enough such samples teach the
model to draw B when asked for A. Two formulations:

``latent``  the paper's: ``||E(x+δ) - E(x_anchor)||₂`` with E the VAE encoder's mean latent
            (:class:`engine.objectives.LatentMatch`; any encoder or ensemble);
``noise``   the diffusion model's predicted noise on the poisoned latent matched to that on the anchor's,
            at the same noise and timestep drawn from the model's own schedule, under the caption's
            conditioning: ``E_{t,ε} ||ε̂(z_t(E(x+δ)), t, c) - ε̂(z_t(E(x_anchor)), t, c)||₂``
            (:class:`NoiseMatch`). The model comes in as plain callables (:class:`NoisePredictor`), so this
            file stays free of ComfyUI.

Anchors: with several anchors, each image is paired with the anchor whose latent is nearest its own
(:func:`pair_anchors`): the smallest change that carries the effect. Defaults: the shared presets of
:func:`engine.cloak.settings_for` (adaptive budget, Adam, EOT); the research release used L∞ 0.04–0.05
with 500 sign steps. Shapes: pixels ``[B, 3, H, W]`` in 0..1, latents ``[B, C, h, w]`` in the VAE's
own space (what ComfyUI's VAE Encode returns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .cloak import CloakResult, CloakSettings, check_images
from .encoders import EncoderEnsemble
from .job import CloakJob
from .optimize import Hooks
from .objectives import EnsembleObjective, LatentMatch, Warp
from .tiling import no_grad_tiles

OBJECTIVES = ("latent", "noise")
# Timesteps are drawn as a fraction u of the model's schedule (0 = most noise); the extreme ends are left
# out: at the very start the prediction is almost the noise itself, at the very end 1/σ blows up.
U_RANGE = (0.02, 0.98)


@dataclass
class NoisePredictor:
    """A diffusion model as the noise objective needs it.

    ``predict(latents, sigmas, noise) -> predicted noise``: latents ``[N, C, h, w]`` in the VAE's space
        (the adapter applies the model's own latent scaling), ``sigmas`` ``[N]``, ``noise`` ``[N, C, h, w]``
        standard normal; the latent is noised to ``sigmas`` by the model's own rule and the model's
        prediction is returned as noise ``[N, C, h, w]`` (differentiable in ``latents``).
    ``sigmas_from_uniform(u) -> sigmas``: ``u`` ``[n]`` in 0..1 (0 = most noise) mapped through the model's
        own schedule, i.e. timestep sampling.
    ``latent_channels``: what the model takes (checked against the encoder); ``name`` for reports.
    """

    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    sigmas_from_uniform: Callable[[torch.Tensor], torch.Tensor]
    latent_channels: int | None = None
    name: str = "diffusion model"


class NoiseMatch(EnsembleObjective):
    """Predicted-noise match (Nightshade's second formulation; the semantic loss of AdvDM/Mist, pulled
    toward an anchor instead of pushed away). Same contract as :mod:`engine.objectives`.

    ``anchors``: one latent per ensemble member, ``[1, C, h, w]`` on the image's latent grid.
    ``draws``: (timestep, noise) draws per loss call, fresh each call (seeded by ``seed``);
    ``eval_draws``: fixed draws, evenly spread over the schedule, for ``calibrate``/``distances`` so that
    distances before and after are comparable. Poisoned and anchor latents always share a draw.
    """

    def __init__(self, encoder: EncoderEnsemble, predictor: NoisePredictor, anchors: Sequence[torch.Tensor],
                 seed: int = 0, draws: int = 1, eval_draws: int = 4):
        if len(anchors) != len(encoder.members):
            raise ValueError(f"got {len(anchors)} anchor latents for an ensemble of {len(encoder.members)}")
        if draws < 1 or eval_draws < 1:
            raise ValueError(f"draws and eval_draws must be at least 1, got {draws} and {eval_draws}")
        channels = predictor.latent_channels
        for a, m in zip(anchors, encoder.members):
            if channels is not None and a.shape[1] != channels:
                raise ValueError(
                    f"encoder {m.name!r} makes {a.shape[1]}-channel latents but {predictor.name} takes {channels}: "
                    "for the noise objective, use the VAE that belongs to the model (e.g. the checkpoint's own)")
        super().__init__(encoder)
        self.predictor = predictor
        self.anchors = [a.detach().float() for a in anchors]
        self.draws, self.eval_draws, self.seed = draws, eval_draws, seed
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def _draw(self, shape, n: int, gen: torch.Generator | None):
        lo, hi = U_RANGE
        u = torch.rand(n, generator=gen) if gen is not None else (torch.arange(n) + 0.5) / n
        sigmas = self.predictor.sigmas_from_uniform(lo + (hi - lo) * u).float().reshape(n)
        noise_gen = gen if gen is not None else torch.Generator(device="cpu").manual_seed(int(self.seed) + 7919)
        noise = torch.randn((n, *shape[1:]), generator=noise_gen)
        return sigmas, noise

    def _member_distance(self, k: int, z: torch.Tensor, warp: Warp | None, draw) -> torch.Tensor:
        sigmas, noise = draw
        b, n = z.shape[0], sigmas.shape[0]
        a = self.anchors[k].to(z.device)
        a = a.expand(b, *a.shape[1:])
        if warp is not None:
            a = warp(a)
        if a.shape[-2:] != z.shape[-2:]:
            raise ValueError(f"anchor latent {list(a.shape)} does not fit the image latent {list(z.shape)}")
        sig = sigmas.to(z.device).repeat_interleave(b)                 # draw-major: row j*b + i
        eps = noise.to(z.device).repeat_interleave(b, dim=0)
        pred = self.predictor.predict(z.repeat(n, 1, 1, 1), sig, eps)
        with torch.no_grad():
            target = self.predictor.predict(a.repeat(n, 1, 1, 1), sig, eps)
        sq = (pred.float() - target.float()).flatten(1).pow(2).sum(1).view(n, b)
        return sq.mean(0).add(1e-12).sqrt()

    def distances(self, pixels: torch.Tensor, warp: Warp | None = None,
                  encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        """At fixed draws spread evenly over the schedule, so distances before and after compare."""
        cols = []
        for k, m in enumerate((encoder or self.encoder).members):
            z = m(pixels)
            cols.append(self._member_distance(k, z, warp, self._draw(z.shape, self.eval_draws, None)))
        return torch.stack(cols, dim=1)

    def training_distances(self, pixels: torch.Tensor, warp: Warp | None = None,
                           encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        """Fresh (timestep, noise) draws every call, seeded, for the loss."""
        cols = []
        for k, m in enumerate((encoder or self.encoder).members):
            z = m(pixels)
            cols.append(self._member_distance(k, z, warp, self._draw(z.shape, self.draws, self.gen)))
        return torch.stack(cols, dim=1)


def cover(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Scale ``[N, C, h, w]`` to cover ``size`` and centre-crop it (no stretching of the anchor's content)."""
    size = (int(size[0]), int(size[1]))
    h, w = t.shape[-2:]
    if (h, w) == size:
        return t
    scale = max(size[0] / h, size[1] / w)
    sh, sw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    t = F.interpolate(t.float(), size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (sh - size[0]) // 2, (sw - size[1]) // 2
    return t[..., top:top + size[0], left:left + size[1]]


def encode(encoder: EncoderEnsemble, pixels: torch.Tensor, chunk: int = 8) -> list[torch.Tensor]:
    """Mean latents of ``pixels`` (already padded) for each member, on the CPU, without gradients."""
    device = encoder.members[0].device
    out = []
    with torch.no_grad():
        for m in encoder.members:
            m = no_grad_tiles(m)  # big images in tiles (one at a time: a tiled batch is no cheaper)
            step = chunk if pixels.shape[-2] * pixels.shape[-1] <= m.tile * m.tile else 1
            out.append(torch.cat([m(pixels[i:i + step].to(device)).float().cpu()
                                  for i in range(0, pixels.shape[0], step)], 0))
    return out


def anchor_latents(encoder: EncoderEnsemble, anchors: torch.Tensor, image_size: Sequence[int],
                   latent_size: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Anchor latents on each member's latent grid of the (padded) image.

    ``anchors``: pixels ``[N, 3, H', W']`` (resized to cover the padded image, then encoded) or, for a single
    encoder, latents ``[N, C, h', w']`` (a LATENT from KSampler; resized to cover the image's latent).
    """
    if not isinstance(anchors, torch.Tensor) or anchors.ndim != 4 or anchors.shape[0] == 0:
        got = list(anchors.shape) if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise ValueError(f"anchor: expected a batch of anchor images or latents of concept B, got {got}")
    if anchors.shape[1] == 3:
        check_images(anchors, encoder, "anchor")
        return encode(encoder, cover(anchors, image_size))
    if len(encoder) != 1:
        raise ValueError(f"an anchor LATENT works with a single encoder; give anchor IMAGES (e.g. VAE Decode "
                         f"of the KSampler output) to poison against an ensemble of {len(encoder)}")
    return [cover(anchors.float().cpu(), latent_size[0])]


def pair_anchors(encoder: EncoderEnsemble, image_latents: Sequence[torch.Tensor],
                 anchor_lats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the index of the anchor whose latent is nearest its own.

    Distance: mean squared latent difference per member (so members with different latent sizes weigh
    alike), weighted by the ensemble's weights. Returns ``(index [B], distances [B, N])``.
    """
    total = None
    for w, z, a in zip(encoder.weights, image_latents, anchor_lats):
        if z.shape[1:] != a.shape[1:]:
            raise ValueError(f"anchor latents {list(a.shape)} do not fit the image latents {list(z.shape)}: "
                             "was the anchor LATENT made with another VAE?")
        d = torch.cdist(z.flatten(1).double(), a.flatten(1).double()).pow(2) / z[0].numel()
        total = w * d if total is None else total + w * d
    return total.argmin(1), total.float()


@dataclass
class PoisonPlan:
    """Everything decided before optimising: the padded image size, each member's image and anchor latents,
    and which anchor each image is paired with."""

    encoder: EncoderEnsemble
    image_latents: list[torch.Tensor]
    anchor_latents: list[torch.Tensor]
    pairing: torch.Tensor
    pair_distances: torch.Tensor

    def anchor_for(self, i: int) -> list[torch.Tensor]:
        j = int(self.pairing[i])
        return [a[j:j + 1] for a in self.anchor_latents]

    def objective_factory(self, objective: str = "latent", predictor: NoisePredictor | None = None,
                          seed: int = 0, draws: int = 1, eval_draws: int = 4):
        """``make_objective(i, padded)`` for :meth:`engine.job.CloakJob.run`."""
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if objective == "noise" and predictor is None:
            raise ValueError("the noise objective needs the diffusion model (a NoisePredictor)")
        device = self.encoder.members[0].device

        def make_objective(i, padded):
            anchors = [a.to(device) for a in self.anchor_for(i)]
            if objective == "latent":
                return LatentMatch(self.encoder, anchors)
            return NoiseMatch(self.encoder, predictor, anchors, seed=seed + i, draws=draws, eval_draws=eval_draws)

        return make_objective

    def latent_check(self, poisoned: torch.Tensor, pad) -> list[dict]:
        """Per image: latent distance to its anchor before/after and to its own original latent after
        (weighted over members); ``nearer_anchor`` when the poisoned latent is nearer the anchor's than the
        original's."""
        after = encode(self.encoder, pad(poisoned))
        rows = []
        for i in range(poisoned.shape[0]):
            before_a = after_a = after_x = 0.0
            for w, z0, z1, a in zip(self.encoder.weights, self.image_latents, after, self.anchor_for(i)):
                before_a += w * float((z0[i] - a[0]).norm())
                after_a += w * float((z1[i] - a[0]).norm())
                after_x += w * float((z1[i] - z0[i]).norm())
            rows.append({"anchor": int(self.pairing[i]), "to_anchor_before": before_a, "to_anchor_after": after_a,
                         "to_original_after": after_x, "nearer_anchor": after_a < after_x,
                         "latent_gain": 1 - after_a / max(before_a, 1e-12)})
        return rows


PAIRINGS = ("nearest", "one per image")


def plan_poison(encoder: EncoderEnsemble, padded: torch.Tensor, anchors: torch.Tensor,
                pairing: str = "nearest") -> PoisonPlan:
    """Encode images and anchors (pixels or latents) on the same grid and pair each image with an anchor.

    ``padded``: the images, already checked and padded to the encoder's multiple (a :class:`CloakJob`'s
    ``padded()``), the encoder prepared. ``pairing`` ``nearest``: each image gets the anchor nearest its latent;
    ``one per image``: image i gets anchor i (anchors made from each image, e.g. img2img of it as concept B,
    which keep its layout, so the poison spends its budget on the concept and not on the layout)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown anchor pairing {pairing!r}; choose one of {PAIRINGS}")
    image_lats = encode(encoder, padded)
    if pairing == "one per image" and anchors.shape[0] != padded.shape[0]:
        raise ValueError(f"anchor pairing 'one per image' needs one anchor per image: got {anchors.shape[0]} "
                         f"anchors for {padded.shape[0]} images (or choose pairing 'nearest')")
    anchor_lats = anchor_latents(encoder, anchors, padded.shape[-2:], [z.shape[-2:] for z in image_lats])
    index, dist = pair_anchors(encoder, image_lats, anchor_lats)
    if pairing == "one per image":
        index = torch.arange(padded.shape[0])
    return PoisonPlan(encoder, image_lats, anchor_lats, index, dist)


@dataclass
class PoisonResult:
    cloak: CloakResult
    plan: PoisonPlan
    checks: list[dict]


def poison(job: CloakJob, plan: PoisonPlan, objective: str = "latent", predictor: NoisePredictor | None = None,
           seed: int = 0, hooks: Hooks = Hooks()) -> PoisonResult:
    """Run ``job`` with the objectives of ``plan`` (toward each image's anchor), then check where each poisoned
    latent landed. ``predictor``: the diffusion model, for ``objective="noise"``."""
    result = job.run(plan.objective_factory(objective, predictor, seed), seed, hooks)
    return PoisonResult(result, plan, plan.latent_check(result.images, job.pad))


def poison_images(images: torch.Tensor, encoder: EncoderEnsemble, anchors: torch.Tensor, settings: CloakSettings,
                  objective: str = "latent", predictor: NoisePredictor | None = None, seed: int = 0,
                  pairing: str = "nearest") -> PoisonResult:
    """Poison ``images`` toward ``anchors`` (see the module docstring): the same job NightshadePoison runs, in one
    call (benches, tests; a host with a progress bar runs :func:`poison` with its hooks)."""
    job = CloakJob(images, encoder, settings)
    return poison(job, plan_poison(job.encoder, job.padded(), anchors, pairing), objective, predictor, seed)


def teaches_nothing_warning(reports: list[dict]) -> str | None:
    """A first-line WARNING naming each poisoned image whose perfect-mimic readout (engine.perfect_mimic: the
    decoded poisoned latent, in pixel style statistics) does not read nearer the anchor (B) than the original (A):
    a model trained through this encoder would learn A from it. None when every image reads as B, or when the
    encoder carries no decoder (no readout). Calibrated on TAEF2 (bench/bench_readout.py): the default poison reads
    about 0.05 of the way to B there, and bench/bench_poison.py's trained model learned no B from such poisons."""
    shares = [r.get("mimic_share") for r in reports]
    weak = [i for i, v in enumerate(shares) if v is not None and not v > 0.5]
    if not weak:
        return None
    listed = ", ".join(f"image {i} ({shares[i]:.2f})" for i in weak)
    return (f"WARNING: {len(weak)} of {len(reports)} poisoned image(s) would teach a model trained through this "
            f"encoder nothing: the picture it would learn still reads nearer the original (A) than the anchor (B) "
            f"({listed} of the way to B; above 0.5 reads as B). Try intensity high or a custom budget, anchors "
            "nearer your images (img2img of them as B), or more poisoned images")


def format_pairing(checks: list[dict], anchors: int) -> str:
    """One line per image: the anchor it got and how its latent moved."""
    lines = [f"anchors ({anchors} given; each image paired with the nearest by latent):"]
    for i, c in enumerate(checks):
        verdict = "nearer the anchor than the original" if c["nearer_anchor"] else "still nearer the original"
        lines.append(f"image {i}: anchor {c['anchor']}, latent distance to anchor {c['to_anchor_before']:.2f} -> "
                     f"{c['to_anchor_after']:.2f} (to original {c['to_original_after']:.2f}: {verdict})")
    return "\n".join(lines)
