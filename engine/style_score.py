"""Style distances for the mimicry test: is a LoRA's output nearer the artist's style or the target style?

Question (Glaze's own evaluation, Shan et al. 2023 §6): train one LoRA on the artist's clean images and one on
the cloaked images, generate with each under the same prompts and seeds, and ask where each set of
generations lands between the artist's style and the target style. The cloak works when the cloaked-set
LoRA lands nearer the target than the clean-set LoRA does.

Two position-free style descriptors, each a vector per image, averaged over a set:

- ``latent``: the encoder's latent channel mean, standard deviation and Gram matrix (``latent_stats``, the
  statistics StyleGuard and Glaze's target-style objective act on): what the cloak changed.
- ``pixel``: colour and texture statistics in pixel space, independent of any encoder. Gatys et al. (2016)
  define style as Gram matrices of feature maps; with no pretrained VGG available offline, the features are
  a fixed multi-scale bank of oriented derivative filters (as in Portilla & Simoncelli's texture statistics,
  which Gram matrices of early VGG layers resemble): per scale, the Gram matrix of the filter responses
  and their mean energy; plus colour moments in an opponent colour space (mean, standard deviation,
  covariance). Images are resized to a common short side first, so the measure does not depend on size.

Distances are Euclidean between set means, divided by the distance between the artist's and the target's
set means (so 1.0 = the whole artist-to-target gap), and summarised as ``target_share`` =
d(artist) / (d(artist) + d(target)): 0 at the artist's style, 1 at the target's, 0.5 half way.
Shapes: pixels ``[B, 3, H, W]`` in 0..1 (engine layout). Pure torch.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .objectives import latent_stats

STYLE_SIDE = 128  # images are resized to this short side before the pixel statistics
SCALES = 3

_OPPONENT = torch.tensor([[1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],   # luminance
                          [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],                # red-green
                          [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]])  # yellow-blue


def _filter_bank() -> torch.Tensor:
    """5 fixed 3x3 filters: horizontal, vertical and two diagonal derivatives, and a Laplacian."""
    dx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    diag = torch.tensor([[0.0, 1, 2], [-1, 0, 1], [-2, -1, 0]]) / 8
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]) / 4
    return torch.stack([dx, dx.T, diag, diag.flip(1), lap])[:, None]


def _check(pixels: torch.Tensor, what: str) -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[0] == 0:
        got = list(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{what}: expected pixels [B, 3, H, W] with B >= 1, got {got}")


def resize_short_side(pixels: torch.Tensor, side: int = STYLE_SIDE) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    scale = side / min(h, w)
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    return F.interpolate(pixels, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)


def pixel_style_features(pixels: torch.Tensor, side: int = STYLE_SIDE) -> torch.Tensor:
    """Colour moments + multi-scale filter-bank Gram matrices, one vector per image: ``[B, D]``."""
    _check(pixels, "pixels")
    x = resize_short_side(pixels.float().clamp(0, 1), side)
    opp = torch.einsum("oc,bchw->bohw", _OPPONENT.to(x), x)
    flat = opp.flatten(2)
    mean, centred = flat.mean(-1), flat - flat.mean(-1, keepdim=True)
    cov = centred @ centred.transpose(1, 2) / flat.shape[-1]
    iu = torch.triu_indices(3, 3)
    feats = [mean, cov[:, iu[0], iu[1]].abs().add(1e-12).sqrt() * cov[:, iu[0], iu[1]].sign()]
    lum, bank = opp[:, :1], _filter_bank().to(x)
    for _ in range(SCALES):
        r = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), bank).flatten(2)  # [B, 5, N]
        gram = r @ r.transpose(1, 2) / r.shape[-1]
        iu5 = torch.triu_indices(5, 5)
        g = gram[:, iu5[0], iu5[1]]
        feats += [g.abs().add(1e-12).sqrt() * g.sign(), r.abs().mean(-1)]
        lum = F.avg_pool2d(lum, 2)
    return torch.cat(feats, 1)


def latent_style_features(latents: torch.Tensor) -> torch.Tensor:
    """The encoder's latent channel mean, std and Gram matrix (upper triangle), one vector per image."""
    if latents.ndim != 4:
        raise ValueError(f"latents: expected [B, C, h, w], got {list(latents.shape)}")
    rows = []
    for z in latents.float():
        s = latent_stats(z[None])
        iu = torch.triu_indices(z.shape[0], z.shape[0])
        rows.append(torch.cat([s["mean"][0], s["std"][0], s["gram"][0][iu[0], iu[1]]]))
    return torch.stack(rows)


# The measures compare pictures, not strips: a side more than MAX_ASPECT times the other is refused (a 1x4096 strip
# at a 128 px short side is a 128x524288 picture, gigabytes); pictures larger than SCORE_SIDE on their long side
# are scored downscaled to it (every set alike; both measures are statistics of the whole picture)
MAX_ASPECT = 8
SCORE_SIDE = 1024
# the artist-to-target gap under this share of the sets' own size is no gap (identical sets up to rounding)
SAME_STYLE = 1e-4


def check_score_images(images: Sequence[torch.Tensor], what: str) -> list[str]:
    """Refuse what the measures cannot take, before any work; returns notes on what was downscaled."""
    notes = []
    for i, x in enumerate(images):
        h, w = x.shape[-2:]
        if min(h, w) < 8 or max(h, w) > MAX_ASPECT * min(h, w):
            raise ValueError(f"{what}: image {i + 1} is {w}x{h}: the style measures compare pictures at least 8 px "
                             f"a side and at most {MAX_ASPECT}:1 (a strip this long would take gigabytes); crop or "
                             "resize it to an ordinary picture first")
        if max(h, w) > SCORE_SIDE:
            notes.append(f"{what} image {i + 1} ({w}x{h}) scored at {SCORE_SIDE} px on its long side")
    return notes


def fit_for_scoring(x: torch.Tensor) -> torch.Tensor:
    """``x`` downscaled (area) to SCORE_SIDE on its long side when larger; unchanged otherwise."""
    h, w = x.shape[-2:]
    if max(h, w) <= SCORE_SIDE:
        return x
    scale = SCORE_SIDE / max(h, w)
    return F.interpolate(x.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")


def image_features(images: Sequence[torch.Tensor], describe: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One descriptor per image of a set (each ``[1 or B, 3, H, W]``, sizes may differ): ``[N, D]``."""
    if not images:
        raise ValueError("an image set is empty: connect at least one image to every input")
    return torch.cat([describe(fit_for_scoring(x)) for x in images])


def set_features(images: Sequence[torch.Tensor], describe: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean descriptor of a set of images (each ``[1 or B, 3, H, W]``, sizes may differ): ``[D]``."""
    return image_features(images, describe).mean(0)


def mean_uncertainty(features: torch.Tensor) -> float:
    """How far the set's mean descriptor could move with other pictures of the same style: the RMS distance of its
    images' descriptors to their mean over sqrt(count - 1) (a standard error; 0 for one image)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    rms = float((features - features.mean(0)).pow(2).sum(1).mean().sqrt())
    return rms / (n - 1) ** 0.5


def placement(artist: torch.Tensor, target: torch.Tensor, generated: torch.Tensor) -> dict:
    """Where ``generated`` (a set's mean descriptor) sits between ``artist`` and ``target``."""
    gap = (artist - target).norm().item()
    size = max(artist.norm().item(), target.norm().item())
    if gap <= SAME_STYLE * size or gap < 1e-9:
        raise ValueError(f"the artist's set and the target-style set have the same style statistics (their gap is "
                         f"{gap / max(size, 1e-12):.1e} of the statistics themselves: the same pictures, up to a "
                         "few pixels); give a target style that differs from the artwork (e.g. img2img with a "
                         "style prompt)")
    to_artist, to_target = (generated - artist).norm().item() / gap, (generated - target).norm().item() / gap
    return {"to_artist": to_artist, "to_target": to_target,
            "target_share": to_artist / max(to_artist + to_target, 1e-12)}


def mimicry_scores(artist: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                   generations: dict[str, Sequence[torch.Tensor]],
                   encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Scores per generation set: ``{name: {"pixel": placement, "latent": placement}}`` (latent only with
    ``encode``, a callable pixels → latents or a list of latents, one per ensemble member), plus ``"verdict"``: per measure, the name of the set whose
    ``target_share`` is highest (the LoRA that copied the artist least)."""
    measures = {"pixel": pixel_style_features}
    if encode is not None:
        def describe_latent(x):
            z = encode(x)
            return torch.cat([latent_style_features(m) for m in (z if isinstance(z, (list, tuple)) else [z])], 1)

        measures["latent"] = describe_latent
    result: dict = {name: {} for name in generations}
    result["notes"] = check_score_images(artist, "artist") + check_score_images(target, "target") + [
        n for name, images in generations.items() for n in check_score_images(images, name)]
    result["verdict"], unclear = {}, []
    for measure, describe in measures.items():
        fa, ft = image_features(artist, describe), image_features(target, describe)
        a, t = fa.mean(0), ft.mean(0)
        for name, images in generations.items():
            result[name][measure] = placement(a, t, set_features(images, describe))
        # a gap within twice what the sets' own spread lets their means wander is no style difference to place
        # anything on: no winner
        own = 2 * (mean_uncertainty(fa) ** 2 + mean_uncertainty(ft) ** 2) ** 0.5
        if (a - t).norm().item() <= own:
            unclear.append(f"{measure}: the artist-to-target gap ({(a - t).norm().item():.3g}) is within what the "
                           f"sets' own spread explains ({own:.3g})")
            result["verdict"][measure] = "none"
        else:
            result["verdict"][measure] = max(generations, key=lambda n: result[n][measure]["target_share"])
    if unclear:
        result["warning"] = ("WARNING: the target style is not told apart from the artist's (" + "; ".join(unclear)
                             + "): no verdict; give a target set whose style clearly differs from the artwork")
    return result


def image_grid(rows: Sequence[Sequence[torch.Tensor]], tile: int = 128, gap: int = 4) -> torch.Tensor:
    """Rows of images (each ``[1, 3, H, W]``) fitted into ``tile``-sized cells on white: ``[1, 3, H, W]``."""
    if not rows or not any(rows):
        raise ValueError("image_grid: nothing to draw")
    cols = max(len(r) for r in rows)
    canvas = torch.ones(1, 3, len(rows) * (tile + gap) + gap, cols * (tile + gap) + gap)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            h, w = img.shape[-2:]
            s = tile / max(h, w)
            th, tw = max(1, round(h * s)), max(1, round(w * s))
            cell = F.interpolate(img[:1].float().clamp(0, 1), size=(th, tw), mode="bilinear",
                                 antialias=s < 1, align_corners=False)
            y, x = gap + i * (tile + gap) + (tile - th) // 2, gap + j * (tile + gap) + (tile - tw) // 2
            canvas[..., y:y + th, x:x + tw] = cell.cpu()
    return canvas
