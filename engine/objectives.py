"""Objectives: what "moving the encoder's view" means, as small callables over encoded pixels.

Every objective here follows one contract (:class:`EnsembleObjective`), used by engine.job and
:func:`engine.optimize.optimize`:

``calibrate(pixels)``     remember the distance of the *unperturbed* (padded) image, per image and member;
``start``                 those distances, ``[B, M]`` (what a target gain is measured from);
``loss(pixels, warp)``    ``[B]`` normalised loss, 1.0 at the start, differentiable in ``pixels``;
                          ``warp`` (optional) maps target latents through the same geometric change
                          an Expectation-over-Transformation draw applied to the pixels;
``distances(pixels)``     ``[B, M]`` raw distance to the target for each ensemble member (metrics);
``tileable``              True when the loss is a sum over latent positions, so engine.tiling can compute it
                          tile by tile: then ``region_loss`` and ``warped_targets`` work too.

Each method takes an optional ``encoder=``: the ensemble whose passes to use (the same members, wrapped to
encode in tiles or under autocast: engine.job passes those in); without it, the ensemble the objective was
made with. The objective itself is never changed by a run.

Pixels are ``[B, 3, H, W]`` in 0..1 with sides a multiple of the encoder's ``multiple``.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .encoders import EncoderEnsemble
from .tiling import no_grad_tiles, plan_tiles

Warp = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StyleTarget:
    """A style target for one encoder (ensemble), as made by :func:`make_style_target`.

    ``mode``      "per_image": latents[i] is the target of image i (the style-transferred version of
                  the same artwork, Glaze's Ω(x, T)); a single target is used for every image;
                  "mean": the mean latent of a style set, one target for all images;
                  "style_stats": channel mean/std and Gram matrices of the set's latents (StyleGuard).
    ``encoder``   the ensemble's name; a target only fits the encoder that made it.
    ``latents``   one tensor per member, ``[N, C, h, w]`` (``[1, ...]`` for "mean").
    ``stats``     one dict per member with "mean" ``[C]``, "std" ``[C]``, "gram" ``[C, C]``.
    """

    mode: str
    encoder: str
    members: list[str]
    latents: list[torch.Tensor]
    stats: list[dict]

    def __len__(self) -> int:
        return self.latents[0].shape[0]

    def check_batch(self, images: int) -> None:
        """Refuse a ``per_image`` target whose count fits neither one per artwork nor one for all (it used to pair
        artwork i with style image i mod N, silently)."""
        if self.mode == "per_image" and len(self) not in (1, images):
            raise ValueError(f"style_target: per_image mode pairs style image i with artwork i, but it has "
                             f"{len(self)} style image(s) for {images} artworks: give one style image per artwork "
                             "(in the same order) or a single one for all, or choose mode mean or style_stats")


TARGET_MODES = ("per_image", "mean", "style_stats")


def latent_stats(z: torch.Tensor) -> dict:
    """Channel mean, std and Gram matrix (of centred channels, normalised by h*w), averaged over the batch."""
    b, c = z.shape[:2]
    f = z.reshape(b, c, -1).float()
    mean = f.mean(-1)
    centred = f - mean[..., None]
    std = centred.pow(2).mean(-1).add(1e-8).sqrt()
    gram = centred @ centred.transpose(1, 2) / f.shape[-1]
    return {"mean": mean, "std": std, "gram": gram}


def make_style_target(encoder: EncoderEnsemble, style_pixels: Sequence[torch.Tensor] | torch.Tensor,
                      mode: str, pad: Callable[[torch.Tensor], torch.Tensor]) -> StyleTarget:
    """Encode style images (``[N, 3, H, W]`` 0..1, or a list of such with different sizes) into a target."""
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown style target mode {mode!r}; choose one of {TARGET_MODES}")
    batches = [style_pixels] if isinstance(style_pixels, torch.Tensor) else list(style_pixels)
    if not batches or sum(b.shape[0] for b in batches) == 0:
        raise ValueError("no style images: give at least one target-style image")
    per_member = []
    with torch.no_grad():
        # one image at a time: a target then does not depend on what else was in the batch (batched
        # convolutions round differently), so the same artwork gets the same cloak; and memory stays flat
        for m in encoder.members:
            m = no_grad_tiles(m)  # a big style image (Glaze's Ω(x, T) has the artwork's size) in tiles
            per_member.append([torch.cat([m(pad(b[j:j + 1])) for j in range(b.shape[0])]) for b in batches])
    return style_target_from_latents(encoder.name, [m.name for m in encoder.members], per_member, mode)


def style_target_from_latents(encoder_name: str, member_names: list[str],
                              latents_per_member: list[list[torch.Tensor]], mode: str) -> StyleTarget:
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown style target mode {mode!r}; choose one of {TARGET_MODES}")
    latents, stats = [], []
    for name, zs in zip(member_names, latents_per_member):
        for t in zs:
            if t.ndim != 4 or 0 in t.shape:
                raise ValueError(f"style latent of {name!r}: expected a non-empty [B, C, h, w] batch, "
                                 f"got {list(t.shape)}")
            if t.shape[1] != zs[0].shape[1]:
                raise ValueError(f"style latents of {name!r} mix {zs[0].shape[1]} and {t.shape[1]} channels")
            if not torch.isfinite(t).all():
                raise ValueError(f"style latent of {name!r} contains NaN or infinite values: a broken LATENT "
                                 "(or a NaN style image) would leave the image unprotected; re-encode the style "
                                 "images with VAE Encode, or wire the style IMAGE instead")
        size = zs[0].shape[-2:]
        z = torch.cat([fit_latent(t.float(), size) for t in zs], 0).cpu()
        stats.append({k: v.mean(0) for k, v in latent_stats(z).items()})
        latents.append(z.mean(0, keepdim=True) if mode == "mean" else z)
    return StyleTarget(mode, encoder_name, list(member_names), latents, stats)


def fit_latent(z: torch.Tensor, size) -> torch.Tensor:
    """Resize a latent ``[N, C, h, w]`` to ``size`` (bilinear) so it lines up with an image's latent."""
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    return F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def check_channels(target_channels: int, encoder_channels: int, encoder_name: str) -> None:
    """A clear error when a target latent comes from another latent space than the encoder's."""
    if int(target_channels) != int(encoder_channels):
        raise ValueError(
            f"the style target has {target_channels}-channel latents but encoder {encoder_name!r} makes "
            f"{encoder_channels}-channel latents: the LATENT comes from another VAE (e.g. 16 channels: SD3/FLUX.1, "
            "4: SD1.x/SDXL, 32: FLUX.2). Wire the style IMAGE into StyleTargetLatents instead (it is encoded with "
            "this encoder), or VAE Encode it with the same VAE this LoadVAEEncoder wraps")


class EnsembleObjective:
    """Shared mechanics: per-member distances, normalisation by the start distance, weights."""

    tileable = False  # a sum over latent positions (region_loss works): see engine.tiling

    def __init__(self, encoder: EncoderEnsemble):
        self.encoder = encoder
        self._start: torch.Tensor | None = None

    def member_distance(self, k: int, z: torch.Tensor, warp: Warp | None) -> torch.Tensor:
        raise NotImplementedError

    def distances(self, pixels: torch.Tensor, warp: Warp | None = None,
                  encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        members = (encoder or self.encoder).members
        cols = [self.member_distance(k, m(pixels), warp) for k, m in enumerate(members)]
        return torch.stack(cols, dim=1)

    def training_distances(self, pixels: torch.Tensor, warp: Warp | None = None,
                           encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        """The distances the loss uses (the same as ``distances`` unless an objective samples, e.g. timesteps)."""
        return self.distances(pixels, warp, encoder)

    def calibrate(self, pixels: torch.Tensor, encoder: EncoderEnsemble | None = None) -> None:
        with torch.no_grad():
            self._start = self.distances(pixels, encoder=encoder).clamp_min(1e-8)

    def set_start(self, start: torch.Tensor) -> None:
        """Use known start distances ``[B, M]`` instead of calibrating (e.g. timing benches)."""
        self._start = start.clamp_min(1e-8)

    @property
    def start(self) -> torch.Tensor:
        """The calibrated distances of the original image, ``[B, M]``."""
        if self._start is None:
            raise RuntimeError(f"{type(self).__name__}: call calibrate(original_pixels) first")
        return self._start

    def loss(self, pixels: torch.Tensor, warp: Warp | None = None,
             encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        d = self.training_distances(pixels, warp, encoder)
        w = torch.tensor(self.encoder.weights, device=d.device)
        return ((d / self.start.to(d.device)) ** 2 * w).sum(1)

    def region_loss(self, pixels: torch.Tensor, warp: Warp | None, tile, targets=None,
                    encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a sum over latent positions; it cannot be tiled")

    def warped_targets(self, warp: Warp, batch: int, device) -> list[torch.Tensor] | None:
        """The whole-image target latents moved by an EOT draw's ``warp`` (tileable objectives)."""
        raise NotImplementedError(f"{type(self).__name__} has no target latents to warp")


class LatentMatch(EnsembleObjective):
    """Pull the encoder latent toward a target latent: ``||E(x+δ) - t||₂`` (Glaze; Nightshade's latent form;
    PhotoGuard's encoder attack).

    ``targets``: one tensor per ensemble member, ``[B or 1, C, h, w]`` on the latent grid of the (padded)
    images being cloaked. Geometric EOT draws warp the target with the image.
    """

    def __init__(self, encoder: EncoderEnsemble, targets: Sequence[torch.Tensor]):
        super().__init__(encoder)
        if len(targets) != len(encoder.members):
            raise ValueError(f"got {len(targets)} targets for an ensemble of {len(encoder.members)}")
        self.targets = [t.float() for t in targets]
        self.original_latents: list[torch.Tensor] = []  # the original's latents, kept by calibrate

    def target_for(self, k: int, z: torch.Tensor, warp: Warp | None) -> torch.Tensor:
        """Member ``k``'s target on the grid of the whole-image latent ``z``, warped with an EOT draw's ``warp``."""
        t = self.targets[k].to(z.device)
        check_channels(t.shape[1], z.shape[1], self.encoder.members[k].name)
        t = t.expand(z.shape[0], *t.shape[1:]) if t.shape[0] == 1 else t
        if warp is not None:
            t = warp(t)
        if t.shape[-2:] != z.shape[-2:]:
            raise ValueError(f"target latent {list(t.shape)} does not fit the image latent {list(z.shape)}")
        return t

    def member_distance(self, k, z, warp):
        return (z - self.target_for(k, z, warp)).flatten(1).norm(dim=1)

    def calibrate(self, pixels: torch.Tensor, encoder: EncoderEnsemble | None = None) -> None:
        """Measure the original's start distances; its latents are kept (``original_latents``, one per member)
        for what else needs them (the decoded start, a warm start), so the original is encoded once."""
        with torch.no_grad():
            self.original_latents = [m(pixels) for m in (encoder or self.encoder).members]
            cols = [self.member_distance(k, z, None) for k, z in enumerate(self.original_latents)]
            self._start = torch.stack(cols, dim=1).clamp_min(1e-8)

    tileable = True

    def region_loss(self, pixels: torch.Tensor, warp: Warp | None, tile,
                    targets: Sequence[torch.Tensor] | None = None,
                    encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        """This loss's share from one tile (engine.tiling): ``pixels`` is the tile's crop (core + margin) of the
        padded image, scored on the core's latents only. The shares of all tiles sum to :meth:`loss`, since the
        squared distance is a sum over latent positions. ``targets`` (optional): whole-image target latents to
        use instead of this objective's (e.g. warped with the whole image by an EOT draw); ``warp`` (optional)
        warps the tile's own target crop."""
        total = 0.0
        for k, m in enumerate((encoder or self.encoder).members):
            z = m(pixels)
            s = pixels.shape[-2] // z.shape[-2]
            t = (self.targets if targets is None else targets)[k].to(z.device)
            check_channels(t.shape[1], z.shape[1], m.name)
            t = t[..., tile.cy0 // s:tile.cy1 // s, tile.cx0 // s:tile.cx1 // s]
            t = t.expand(z.shape[0], *t.shape[1:]) if t.shape[0] == 1 else t
            if warp is not None:
                t = warp(t)
            core = (slice((tile.y0 - tile.cy0) // s, (tile.y1 - tile.cy0) // s),
                    slice((tile.x0 - tile.cx0) // s, (tile.x1 - tile.cx0) // s))
            # where this tile's target comes from, when it is this objective's own, unwarped one (None otherwise)
            where = (tile.cy0, tile.cy1, tile.cx0, tile.cx1) if targets is None and warp is None else None
            total = total + self.encoder.weights[k] * self.tile_term(k, m, z, t, core, where)
        return total

    def tile_term(self, k: int, member, z: torch.Tensor, t: torch.Tensor, core: tuple[slice, slice],
                  where=None) -> torch.Tensor:
        """Member ``k``'s normalised loss on one tile: ``z`` and ``t`` the tile crop's latent and target, ``core``
        the (rows, columns) of the latent grid the tile scores; ``where`` names the tile when ``t`` is the
        objective's own unwarped target (None otherwise), so that what depends on the target alone can be kept."""
        sq = (z[..., core[0], core[1]] - t[..., core[0], core[1]]).pow(2).flatten(1).sum(1)
        return sq / self.start[:, k].to(z.device) ** 2

    def warped_targets(self, warp: Warp, batch: int, device) -> list[torch.Tensor]:
        return [warp(t.to(device).expand(batch, *t.shape[1:])) for t in self.targets]


def decode_in_tiles(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, side: int = 64,
                    margin: int = 4) -> torch.Tensor:
    """``decode(z)`` without gradients, in latent tiles of ``side`` (+ ``margin`` each way, cut off again) when
    ``z`` is bigger than one: a big image's decoded target and start distance in bounded memory."""
    h, w = z.shape[-2:]
    with torch.no_grad():
        if h * w <= (side + 2 * margin) ** 2:
            return decode(z)
        rows = []
        for y0 in range(0, h, side):
            cols = []
            for x0 in range(0, w, side):
                y1, x1 = min(h, y0 + side), min(w, x0 + side)
                cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
                out = decode(z[..., cy0:min(h, y1 + margin), cx0:min(w, x1 + margin)])
                s = out.shape[-2] // (min(h, y1 + margin) - cy0)
                cols.append(out[..., (y0 - cy0) * s:(y1 - cy0) * s, (x0 - cx0) * s:(x1 - cx0) * s])
            rows.append(torch.cat(cols, -1))
        return torch.cat(rows, -2)


class DecodedLatentMatch(LatentMatch):
    """:class:`LatentMatch` whose loss also pulls the *decoded* latent toward the decoded target: with weight ``w``,
    ``(1 - w) (|z - t| / |z0 - t|)² + w (|D(z) - D(t)| / |D(z0) - D(t)|)²`` for each member that carries its
    decoder ``D`` (TAE files with a ``*_decoder`` beside them); members without one keep the latent term alone.

    A model that learns the cloaked latents perfectly draws ``D(E(x'))``: the latent distance weighs every latent
    direction alike, the decoded one by how much it changes the picture such a model draws (bench/screen_mimic.py:
    on TAEF2 it doubled the decoded style shift on line art and painting). ``distances``, the start and so the
    report's target gain stay the latent ones; only the loss mixes. Tileable: each tile decodes its own latents and
    its crop of the target's, and scores the core.
    """

    def __init__(self, encoder: EncoderEnsemble, targets: Sequence[torch.Tensor], weight: float = 0.5,
                 every: int = 1, style: float = 0.0):
        super().__init__(encoder, targets)
        if not 0 <= weight <= 1:
            raise ValueError(f"decoded weight must lie in [0, 1], got {weight}")
        if not 0 <= style <= 1 - weight:
            raise ValueError(f"decoded style weight must lie in [0, 1 - decoded weight], got {style}")
        if int(every) < 1:
            raise ValueError(f"the decoded term's refresh interval must be at least 1 pass, got {every}")
        self.weight = float(weight)
        # ``style`` > 0: a third term, the distance between feature statistics (channel means and Gram matrices of
        # the member's own encoder layers, style_stack) of the decoded latent and of the decoded target: the
        # texture a model that learns the latents draws, in Gatys et al.'s sense of style
        self.style = float(style)
        self._style_start: torch.Tensor | None = None  # [B, M]: that distance at the start
        self._style_targets: dict = {}
        self._style_nets: dict = {}  # member -> its style_stack (or None), built once
        # ``every`` > 1: the decoder runs on one unwarped pass in ``every`` per place; the passes between reuse that
        # pass's gradient of the decoded term with respect to the latent (a first-order model of it), so a step
        # costs an encoder pass alone there. Warped draws always decode.
        self.every = int(every)
        self._decoded_start: torch.Tensor | None = None  # [B, M]: |D(z0) - D(t)| (1 where a member has no decoder)
        self._decoded_targets: dict = {}  # D(t) of unwarped targets (whole image or one tile's crop), kept per pass kind
        self._linear: dict = {}  # place key -> (passes since refresh, the decoded part's value, its gradient in z, z then)

    def decoded_target(self, k: int, decode, t: torch.Tensor, z: torch.Tensor, where=None) -> torch.Tensor:
        """``decode(t)`` without gradients, computed once per member, place (``where``: the whole image or one
        tile) and pass kind (shape, dtype, device, autocast) when the target is not warped (``where`` None means
        warped: decoded afresh). The target is fixed for a job, so one decoder forward per step is saved."""
        if where is None:
            with torch.no_grad():
                return decode(t)
        key = self._pass_key(k, where, z)
        got = self._decoded_targets.get(key)
        if got is None:
            with torch.no_grad():
                got = self._decoded_targets[key] = decode(t)
        return got

    @staticmethod
    def _pass_key(k: int, where, z: torch.Tensor) -> tuple:
        """Member, place and pass kind (shape, dtype, device, autocast): what a kept decode is valid for."""
        return k, where, tuple(z.shape), z.dtype, str(z.device), torch.is_autocast_enabled(z.device.type)

    def style_net(self, k: int):
        """Member ``k``'s encoder layers up to its deepest style layer (:func:`style_stack`: TAESD-family and
        full-size KL VAE encoders), or None (no style term for it)."""
        if self.style == 0:
            return None
        if k not in self._style_nets:
            self._style_nets[k] = style_stack(getattr(self.encoder.members[k], "module", None))
        return self._style_nets[k]

    def style_stats(self, k: int, pixels: torch.Tensor, core=None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Per image, channel means and centred Gram matrices of member ``k``'s style layers on ``pixels`` (0..1);
        ``core`` (rows, columns) in pixels: the statistics of that window of each layer only; ``dtype``: the layers'
        autocast precision (:func:`style_stats_of`)."""
        return style_stats_of(self.style_net(k), pixels, core, dtype)

    def style_stats_whole(self, k: int, pixels: torch.Tensor, tile: int | None = None,
                          margin: int | None = None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """:meth:`style_stats` of a whole picture without gradients, in tiles of ``tile`` px (+ ``margin`` of context
        each way) where it is bigger: each tile's core adds its feature sums and uncentred Gram sums (float64), and
        the mean and centred Gram come from the totals, so the figures are the whole picture's (the style layers
        have no normalisation, and the margin covers their receptive field) at a tile's memory (a default cloak of
        a 2048² picture through TAEF2 peaked at 2.76 GiB RSS against 3.35 GiB with one whole-image pass). Exact
        for the TAE family; a full KL VAE's style layers hold GroupNorms, which normalise each tile by its own
        statistics there (this only sets the style term's unit, its start distance). ``dtype``: the layers' autocast
        precision (:func:`style_taps_at`)."""
        tile, margin = tile or STYLE_TILE, STYLE_MARGIN if margin is None else margin
        h, w = pixels.shape[-2:]
        if h * w <= (tile + 2 * margin) ** 2:
            with torch.no_grad():
                return self.style_stats(k, pixels, None, dtype)
        sums: dict = {}
        with torch.no_grad():
            for tl in plan_tiles(h, w, tile, margin, 1):
                crop = pixels[..., tl.cy0:tl.cy1, tl.cx0:tl.cx1]
                for i, f in enumerate(style_taps_at(self.style_net(k), crop, dtype)):
                    sc = (tl.cy1 - tl.cy0) // f.shape[-2]
                    f = f[..., (tl.y0 - tl.cy0) // sc:(tl.y1 - tl.cy0) // sc, (tl.x0 - tl.cx0) // sc:(tl.x1 - tl.cx0) // sc]
                    f = f.reshape(f.shape[0], f.shape[1], -1).float()
                    got = sums.setdefault(i, [0.0, 0.0, 0])
                    got[0] = got[0] + f.sum(-1).double()
                    got[1] = got[1] + (f @ f.transpose(1, 2)).double()
                    got[2] += f.shape[-1]
        out = []
        for i in sorted(sums):
            total, outer, n = sums[i]
            mean = total / n
            gram = outer / n - mean[:, :, None] * mean[:, None, :]
            out += [mean.float(), gram.float().flatten(1)]
        return out

    def decoded_term(self, k: int, decode, z: torch.Tensor, t: torch.Tensor, where=None,
                     core: tuple[slice, slice] | None = None, style_scale: float = 1.0,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[B]``: member ``k``'s decoded part of the loss, ``weight |D(z) - D(t)|² / |D(z0) - D(t)|²`` (summed over
        ``core``, latent rows and columns, or everything) plus, with a style term, ``style · style_scale`` times the
        squared style distance over its start; exact or, between refreshes (``every`` > 1, unwarped places only), as
        the last exact pass's value plus its gradient times the change in ``z`` since then (one gradient of the
        weighted sum: one backward through the decoder a refresh). ``dtype``: the pass's autocast precision (the
        pass member's ``autocast_dtype``), which the style layers run at too."""
        styled = self.style_net(k) is not None
        c_dec = self.weight / self._decoded_start[:, k].to(z.device) ** 2
        c_sty = self.style * style_scale / self._style_start[:, k].to(z.device) ** 2 if styled else None

        def exact(zz):
            dz = decode(zz)
            dt = self.decoded_target(k, decode, t, zz, where)
            f = dz.shape[-2] // zz.shape[-2]
            pix = None if core is None else (slice(core[0].start * f, core[0].stop * f),
                                             slice(core[1].start * f, core[1].stop * f))
            diff = (dz - dt).float().pow(2)
            out = c_dec * (diff if pix is None else diff[..., pix[0], pix[1]]).flatten(1).sum(1)
            if not styled:
                return out
            mine = self.style_stats(k, dz, pix, dtype)
            theirs = self.style_target(k, decode, dt, zz, where, pix, dtype)
            return out + c_sty * style_distance(mine, theirs)

        if where is None or self.every == 1:
            return exact(z)
        key = self._pass_key(k, where, z)
        got = self._linear.get(key)
        if got is not None and got[0] < self.every:
            passes, value, grad, z_then = got
        else:  # refresh: the exact value and its gradient at this latent
            passes, z_then = 0, z.detach().requires_grad_(True)
            with torch.enable_grad():
                v = exact(z_then)
                grad = torch.autograd.grad(v.sum(), z_then)[0].detach()
            value, z_then = v.detach(), z_then.detach()
        self._linear[key] = (passes + 1, value, grad, z_then)
        return value + (grad * (z - z_then)).flatten(1).sum(1)

    def style_target(self, k: int, decode, dt: torch.Tensor, z: torch.Tensor, where, pix,
                     dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """The style statistics of the decoded target ``dt`` (layers at ``dtype``, as the pass's), kept per place and
        pass kind like its decode."""
        if where is None:
            with torch.no_grad():
                return self.style_stats(k, dt, pix, dtype)
        key = self._pass_key(k, where, z) + (dtype,)
        got = self._style_targets.get(key)
        if got is None:
            with torch.no_grad():
                got = self._style_targets[key] = self.style_stats(k, dt, pix, dtype)
        return got

    def calibrate(self, pixels: torch.Tensor, encoder: EncoderEnsemble | None = None) -> None:
        super().calibrate(pixels, encoder)
        self._decoded_targets, self._linear, self._style_targets = {}, {}, {}
        # member -> (D(z0), D(t)) as decoded here, float32: the report's perfect-mimic readout draws the same two
        # pictures (engine.perfect_mimic), so it takes them from here instead of decoding them again; kept up to
        # KEEP_DECODED_PIXELS (beyond, two whole pictures held through the optimisation cost more memory than the
        # readout's two decodes cost time)
        self.decoded_pictures = {}
        cols, styles = [], []
        ones = torch.ones(pixels.shape[0], device=self.start.device)
        with torch.no_grad():
            for k, m in enumerate((encoder or self.encoder).members):
                dec = m.decode  # at the passes' precision where ``encoder`` is the job's (engine.precision.Autocast)
                if dec is None:
                    cols.append(ones)
                    styles.append(ones)
                    continue
                z = self.original_latents[k]
                t = self.target_for(k, z, None)
                dz, dt = decode_in_tiles(dec, z), decode_in_tiles(dec, t)
                if dz.shape[-2] * dz.shape[-1] <= KEEP_DECODED_PIXELS:
                    self.decoded_pictures[k] = (dz, dt)
                cols.append((dz - dt).flatten(1).norm(dim=1).to(self.start.device))
                if self.style_net(k) is None:
                    styles.append(ones)
                    continue
                dtype = getattr(m, "autocast_dtype", None)
                sty = style_distance(self.style_stats_whole(k, dz, dtype=dtype), self.style_stats_whole(k, dt, dtype=dtype))
                styles.append(sty.sqrt().to(self.start.device))
        self._decoded_start = torch.stack(cols, 1).clamp_min(1e-8)
        self._style_start = torch.stack(styles, 1).clamp_min(1e-8)

    def mix(self, k: int, lat_sq: torch.Tensor, decoded: torch.Tensor, device) -> torch.Tensor:
        """The normalised loss of member ``k``: the latent squared distance over its start, weighted, plus the
        decoded part (:meth:`decoded_term`, already weighted and normalised)."""
        rest = 1 - self.weight - (self.style if self.style_net(k) is not None else 0.0)
        return rest * lat_sq / self.start[:, k].to(device) ** 2 + decoded

    def training_distances(self, pixels: torch.Tensor, warp: Warp | None = None,
                           encoder: EncoderEnsemble | None = None) -> torch.Tensor:
        """The mixed distance, in the latent start's units (so ``loss`` = the mix above)."""
        cols = []
        for k, m in enumerate((encoder or self.encoder).members):
            z = m(pixels)
            lat = self.member_distance(k, z, warp)
            dec_fn = m.decode
            if dec_fn is None or (self.weight == 0 and self.style_net(k) is None):
                cols.append(lat)
                continue
            decoded = self.decoded_term(k, dec_fn, z, self.target_for(k, z, warp), None if warp else "whole",
                                        dtype=getattr(m, "autocast_dtype", None))
            mixed = self.mix(k, lat ** 2, decoded.clamp_min(0), z.device)
            cols.append((mixed.clamp_min(0) + 1e-12).sqrt() * self.start[:, k].to(z.device))
        return torch.stack(cols, 1)

    def tile_term(self, k, member, z, t, core, where=None):
        term = super().tile_term(k, member, z, t, core, where)
        if member.decode is None or (self.weight == 0 and self.style_net(k) is None):
            return term
        area = 1.0
        if self.style_net(k) is not None:  # a tile's statistics stand for its share of the whole image's
            h, w = self.original_latents[k].shape[-2:]
            area = (core[0].stop - core[0].start) * (core[1].stop - core[1].start) / (h * w)
        decoded = self.decoded_term(k, member.decode, z, t, where, core, style_scale=area,
                                    dtype=getattr(member, "autocast_dtype", None))
        return self.mix(k, term * self.start[:, k].to(z.device) ** 2, decoded, z.device)


# the layers of a TAESD-family encoder whose statistics make DecodedLatentMatch's style term: the residual blocks
# ending the full-, half- and quarter-resolution stages of TAESD/TAEF2's encoders (64 channels each)
STYLE_LAYERS = (1, 5, 9)
KEEP_DECODED_PIXELS = 2048 * 2048  # see DecodedLatentMatch.calibrate
# calibration's style statistics of a whole picture run in tiles of this side (px) with this margin of context
# (DecodedLatentMatch.style_stats_whole): TAEF2's style layers (up to its 1/4-scale blocks) see ~40 px around a pixel
STYLE_TILE, STYLE_MARGIN = 512, 64
# the same three stages of a full-size KL VAE's encoder (SD1.x, SDXL, SD3, FLUX.1, FLUX.2: ComfyUI's
# comfy.ldm.modules.diffusionmodules.model.Encoder): the last residual block of the full-, half- and
# quarter-resolution levels (128, 256 and 512 channels in SD's configuration)
LDM_STYLE_LEVELS = 3


def style_stack(net) -> torch.nn.Sequential | None:
    """An encoder network's layers up to its deepest style layer, as an ``nn.Sequential`` whose ``taps`` attribute
    holds the indices of the layers whose statistics make the style term; None where the network has no such
    layers (no style term there). Two families: a TAESD-family ``nn.Sequential`` from the 3 pixel channels (taps
    STYLE_LAYERS), and a full-size KL VAE's encoder with ``conv_in`` and ``down[i].block`` levels (taps: the end
    of each of its first LDM_STYLE_LEVELS levels, before their downsampling)."""
    if isinstance(net, torch.nn.Sequential):
        if len(net) <= max(STYLE_LAYERS):
            return None
        first = net[0]
        if not (isinstance(first, torch.nn.Conv2d) and first.in_channels == 3):
            return None
        stack = net[:max(STYLE_LAYERS) + 1]
        stack.taps = STYLE_LAYERS
        return stack
    return _ldm_style_stack(net)


def _ldm_style_stack(net) -> torch.nn.Sequential | None:
    """The first LDM_STYLE_LEVELS levels of an LDM-style encoder (``conv_in``, then per level its residual blocks,
    their attention where it has any, and its downsampling), as a Sequential with ``taps``; None for anything else."""
    conv_in, down = getattr(net, "conv_in", None), getattr(net, "down", None)
    if conv_in is None or getattr(conv_in, "in_channels", None) != 3 or not isinstance(down, torch.nn.ModuleList) \
            or len(down) < LDM_STYLE_LEVELS or not all(hasattr(level, "block") for level in down[:LDM_STYLE_LEVELS]):
        return None
    layers, taps = [conv_in], []
    for i, level in enumerate(down[:LDM_STYLE_LEVELS]):
        attn = getattr(level, "attn", None) or []
        for j, block in enumerate(level.block):
            layers.append(block)  # ResnetBlock(x, temb=None)
            if len(attn) > j:
                layers.append(attn[j])
        taps.append(len(layers) - 1)
        if i < LDM_STYLE_LEVELS - 1 and getattr(level, "downsample", None) is not None:
            layers.append(level.downsample)
    stack = torch.nn.Sequential(*layers)
    stack.taps = tuple(taps)
    return stack


def style_taps(net, pixels: torch.Tensor):
    """The outputs of a :func:`style_stack`'s style layers (its ``taps``) on ``pixels``, shallowest first; the
    layers past the deepest tap are not run."""
    h = pixels.to(dtype=next(net.parameters()).dtype)
    for i, layer in enumerate(net):
        h = layer(h)
        if i in net.taps:
            yield h
        if i >= max(net.taps):
            return


def style_taps_at(net, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """:func:`style_taps` as a list, the layers run under autocast to ``dtype`` (bfloat16 / float16) as the encoder's
    passes are (a default cloak's style layers ran float32 beside bf16 passes: a quarter of its time,
    docs/evidence.md); None or float32: as the network's weights are. Whatever reads the outputs runs outside the
    autocast, so statistics taken from them stay float32."""
    low = dtype is not None and dtype != torch.float32
    with torch.autocast(pixels.device.type, dtype=dtype) if low else contextlib.nullcontext():
        return list(style_taps(net, pixels))


def style_stats_of(net, pixels: torch.Tensor, core=None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Per image, channel means and centred Gram matrices (flattened) of each style layer of ``net`` (a
    :func:`style_stack`) on ``pixels``; ``core`` (rows, columns) in pixels: that window of each layer only;
    ``dtype``: the layers' autocast precision (:func:`style_taps_at`), the statistics float32 whatever it is."""
    out = []
    for f in style_taps_at(net, pixels, dtype):
        if core is not None:
            sc = pixels.shape[-2] // f.shape[-2]
            f = f[..., core[0].start // sc:core[0].stop // sc, core[1].start // sc:core[1].stop // sc]
        st = latent_stats_per_image(f)
        out += [st["mean"], st["gram"].flatten(1)]
    return out


def style_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``[B]``: the squared distance between two :func:`style_stats_of` results, summed over their statistics."""
    return sum((u.float() - v.float()).pow(2).sum(1) for u, v in zip(a, b))


def latent_stats_per_image(f: torch.Tensor) -> dict:
    """Channel mean ``[B, C]`` and centred Gram matrix ``[B, C, C]`` (normalised by h*w) of each image."""
    b, c = f.shape[:2]
    f = f.reshape(b, c, -1).float()
    mean = f.mean(-1)
    centred = f - mean[..., None]
    return {"mean": mean, "gram": centred @ centred.transpose(1, 2) / f.shape[-1]}


class LatentStyleStats(EnsembleObjective):
    """Match latent style statistics (channel mean/std and Gram matrix) of a style set (StyleGuard, 2025).

    Position-free, so it needs no paired style-transferred image and ignores geometric warps.
    ``stats``: one dict per member as in :func:`latent_stats` (unbatched tensors).
    """

    def __init__(self, encoder: EncoderEnsemble, stats: Sequence[dict], gram_weight: float = 1.0):
        super().__init__(encoder)
        self.stats = list(stats)
        self.gram_weight = gram_weight

    def member_distance(self, k, z, warp):
        check_channels(self.stats[k]["mean"].shape[-1], z.shape[1], self.encoder.members[k].name)
        s, t = latent_stats(z), {n: v.to(z.device) for n, v in self.stats[k].items()}
        sq = ((s["mean"] - t["mean"]) ** 2).sum(1) + ((s["std"] - t["std"]) ** 2).sum(1)
        sq = sq + self.gram_weight * ((s["gram"] - t["gram"]) ** 2).flatten(1).sum(1)
        return sq.add(1e-12).sqrt()


def objective_for_target(encoder: EncoderEnsemble, target: StyleTarget, index: int,
                         latent_size: Sequence[tuple[int, int]]) -> EnsembleObjective:
    """The objective for image ``index`` of a batch, given a style target; ``latent_size`` per member."""
    if target.encoder != encoder.name:
        raise ValueError(
            f"this style target was made with encoder {target.encoder!r} but the cloak uses {encoder.name!r}: "
            "make the style target with the same encoder (wire the same LoadVAEEncoder output to both nodes)")
    if target.mode == "style_stats":
        return LatentStyleStats(encoder, target.stats)
    ts = []
    for z, size in zip(target.latents, latent_size):
        pick = z[index % z.shape[0]: index % z.shape[0] + 1]
        ts.append(fit_latent(pick, size))
    return LatentMatch(encoder, ts)
