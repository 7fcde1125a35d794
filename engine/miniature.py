"""A miniature latent diffusion model, trained from scratch on a TAE's latents: the judge of a cloak.

A cloak's latent gain is a proxy; the question an artist asks is what a model *trained* on cloaked images draws
(DESIGN.md §7). On a CPU that can be asked of a small model over TAEF2 latents (128² crops → ``[32, 16, 16]``):
a two-level conv UNet with a timestep embedding (and a class embedding for concept poisoning), trained with the
v-parameterisation on a cosine schedule, weights averaged (EMA), sampled with DDIM. Pure torch; runs on a GPU
unchanged (everything follows the latents' device).

    model = train(latents, labels=None, config=MiniConfig(channels=32), settings=TrainSettings(steps=1500))
    z = sample(model, 64, seed=0)                        # [64, 32, 16, 16], in the latents' own scale
    save(model, path); model = load(path)

Shapes: latents ``[N, C, h, w]`` with ``h`` and ``w`` divisible by ``2 ** (levels - 1)``; labels ``[N]`` int64 in
``0..classes-1``. Latents are standardised per channel with the training set's own mean and spread (kept in the
model), so the same settings serve any TAE.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

T_MIN, T_MAX = 1e-3, 1 - 1e-3  # the schedule's ends are left out (σ = 0 or α = 0 makes v degenerate)


@dataclass(frozen=True)
class MiniConfig:
    """The network: ``channels`` of the latents, ``width`` features at full latent resolution (twice that below),
    ``levels`` resolutions, ``classes`` > 0 for a class-conditional model (concept ids)."""

    channels: int = 32
    width: int = 64
    levels: int = 2
    classes: int = 0


@dataclass(frozen=True)
class TrainSettings:
    """``steps`` of ``batch`` latents; AdamW at ``lr`` with a cosine decay to a tenth; EMA of the weights with
    ``ema``; ``flip``: random horizontal flips (a style has no handedness); ``seed`` fixes the data order, noise
    and initial weights, so models trained on clean and cloaked sets see the same draws."""

    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    ema: float = 0.995
    flip: bool = True
    seed: int = 0


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(e)[..., None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class MiniUNet(nn.Module):
    """Two blocks per level down, one in the middle, two per level up with skip connections; ``forward(x, t, y)``
    predicts v for latents ``x`` at times ``t`` ``[B]`` in 0..1 (1 = pure noise) and labels ``y`` (or None)."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        self.config = config
        w, e = config.width, config.width * 4
        self.time = nn.Sequential(nn.Linear(w, e), nn.SiLU(), nn.Linear(e, e))
        self.label = nn.Embedding(config.classes, e) if config.classes else None
        widths = [w * min(2 ** i, 2) for i in range(config.levels)]
        self.inp = nn.Conv2d(config.channels, w, 3, padding=1)
        self.down = nn.ModuleList()
        c = w
        for i, cw in enumerate(widths):
            self.down.append(nn.ModuleList([ResBlock(c, cw, e), ResBlock(cw, cw, e)]))
            c = cw
        self.pool = nn.ModuleList([nn.Conv2d(cw, cw, 3, stride=2, padding=1) for cw in widths[:-1]])
        self.mid = ResBlock(c, c, e)
        self.up = nn.ModuleList()
        for cw in reversed(widths):
            self.up.append(nn.ModuleList([ResBlock(c + cw, cw, e), ResBlock(cw, cw, e)]))
            c = cw
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, config.channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.register_buffer("mean", torch.zeros(config.channels))
        self.register_buffer("std", torch.ones(config.channels))

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        half = self.config.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = 1000.0 * t[:, None].float() * freqs[None]
        e = self.time(torch.cat([angles.sin(), angles.cos()], 1))
        if self.label is not None:
            if y is None:
                raise ValueError(f"this model is class-conditional ({self.config.classes} classes): give labels")
            e = e + self.label(y)
        return e

    def forward(self, x, t, y=None):
        e = self.embed(t, y)
        h, skips = self.inp(x), []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, e)
        for i, blocks in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = blocks[1](blocks[0](torch.cat([h, skip], 1), e), e)
        return self.out(h)

    def normalise(self, z):
        return (z - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def denormalise(self, z):
        return z * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine schedule: ``x_t = α·x_0 + σ·ε`` with ``α = cos(πt/2)``, ``σ = sin(πt/2)``."""
    angle = t.clamp(T_MIN, T_MAX) * (math.pi / 2)
    return angle.cos(), angle.sin()


def check_latents(latents: torch.Tensor, labels: torch.Tensor | None, config: MiniConfig) -> None:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] == 0:
        got = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents: expected a non-empty batch [N, C, h, w], got {got}")
    if latents.shape[1] != config.channels:
        raise ValueError(f"latents have {latents.shape[1]} channels but the model takes {config.channels}")
    step = 2 ** (config.levels - 1)
    if latents.shape[-2] % step or latents.shape[-1] % step:
        raise ValueError(f"latent sides {list(latents.shape[-2:])} must be divisible by {step} ({config.levels} levels)")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or infinite values")
    if config.classes:
        if labels is None or labels.shape != (latents.shape[0],):
            raise ValueError(f"a class-conditional model needs one label per latent, got "
                             f"{None if labels is None else list(labels.shape)} for {latents.shape[0]}")
        if int(labels.min()) < 0 or int(labels.max()) >= config.classes:
            raise ValueError(f"labels must lie in 0..{config.classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    elif labels is not None:
        raise ValueError("labels given to an unconditional model: set MiniConfig(classes=...)")


def train(latents: torch.Tensor, labels: torch.Tensor | None = None, config: MiniConfig = MiniConfig(),
          settings: TrainSettings = TrainSettings(),
          on_step: Callable[[int, int, float], None] | None = None) -> MiniUNet:
    """Train a model on ``latents`` (``[N, C, h, w]``, and ``labels`` ``[N]`` for a class-conditional one); returns
    the EMA weights, in eval mode. ``on_step(step, steps, loss)`` after every step (progress, Cancel by raising)."""
    check_latents(latents, labels, config)
    device = latents.device
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    torch.manual_seed(int(settings.seed))  # initial weights
    model = MiniUNet(config).to(device)
    data = latents.detach().float()
    with torch.no_grad():
        model.mean.copy_(data.mean((0, 2, 3)))
        model.std.copy_(data.std((0, 2, 3)).clamp_min(1e-4))
    data = model.normalise(data)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    n = data.shape[0]
    order = torch.randperm(n, generator=gen)
    cursor = 0
    for step in range(settings.steps):
        if cursor + settings.batch > n:  # a new epoch: a fresh seeded order (the same for every set of this size)
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + settings.batch] if settings.batch <= n else torch.randint(n, (settings.batch,),
                                                                                              generator=gen)
        cursor += settings.batch
        x0 = data[idx.to(device)]
        if settings.flip:
            flip = (torch.rand(x0.shape[0], generator=gen) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.rand(x0.shape[0], generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(t))
        y = None if labels is None else labels[idx].to(device)
        pred = model(a * x0 + s * eps, t, y)
        loss = F.mse_loss(pred, a * eps - s * x0)
        for group in opt.param_groups:
            group["lr"] = settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, settings.steps))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(settings.ema, (1 + step) / (10 + step))  # a short warm-up, then the set decay
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if on_step is not None:
            on_step(step + 1, settings.steps, float(loss.detach()))
    return ema.eval()


@torch.no_grad()
def sample(model: MiniUNet, count: int, size: tuple[int, int] = (16, 16), steps: int = 40, seed: int = 0,
           labels: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` latents ``[count, C, *size]`` (in the training latents' own scale) by deterministic DDIM over
    ``steps`` steps from seeded noise; ``labels`` ``[count]`` for a class-conditional model."""
    device = model.mean.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn((count, model.config.channels, *size), generator=gen).to(device)
    y = None if labels is None else labels.to(device)
    times = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((count,), float(times[i]), device=device)
        a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(t))
        v = model(x, t, y)
        x0, eps = a * x - s * v, s * x + a * v
        if i == steps - 1:
            x = x0
        else:
            a1, s1 = (v_.view(-1, 1, 1, 1) for v_ in alpha_sigma(torch.full((count,), float(times[i + 1]), device=device)))
            x = a1 * x0 + s1 * eps
    return model.denormalise(x)


def save(model: MiniUNet, path: str) -> None:
    torch.save({"config": asdict(model.config), "state": model.state_dict()}, path)


def load(path: str, device: torch.device | str = "cpu") -> MiniUNet:
    data = torch.load(path, map_location="cpu", weights_only=True)
    model = MiniUNet(MiniConfig(**data["config"]))
    model.load_state_dict(data["state"])
    return model.to(device).eval().requires_grad_(False)


def fit_ratio(samples: torch.Tensor, training: torch.Tensor, artist: torch.Tensor, target: torch.Tensor) -> float:
    """The fit check of DESIGN.md §7 on style features (``[N, D]`` each, e.g. engine.style_score's): the distance
    from the samples' mean to the model's own training set's mean, in units of the artist-to-target distance. A
    model reproduces its training set's style when this is small (the mimicry bench asks ≤ 0.25)."""
    gap = (artist.mean(0) - target.mean(0)).norm().clamp_min(1e-12)
    return float((samples.mean(0) - training.mean(0)).norm() / gap)


__all__ = ["MiniConfig", "TrainSettings", "MiniUNet", "train", "sample", "save", "load", "fit_ratio",
           "alpha_sigma"]
