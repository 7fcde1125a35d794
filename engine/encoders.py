"""Encoder adapters: the one interface every objective talks to.

An encoder maps pixels ``[B, 3, H, W]`` in 0..1 to latents ``[B, C, H/f, W/f]`` and must be
differentiable with respect to its input. ComfyUI's VAEs, TAESD, or any torch callable fit behind
:class:`CallableEncoder`; several encoders form an :class:`EncoderEnsemble` so that a cloak computed
against all of them transfers better to models the artist cannot test.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class LatentEncoder(Protocol):
    """What the engine needs from an encoder.

    ``name``          a stable identity (used to check a style target was made with this encoder);
    ``multiple``      input sides must be a multiple of this (the spatial downscale factor);
    ``min_size``      the smallest side (pixels) worth encoding;
    ``device``/``dtype`` where and in which precision the model runs (the perturbation stays float32);
    ``prepare``       None, or called once before a job (e.g. to load the model onto its device);
    ``decode``        None, or this encoder's matching decoder (latents → pixels 0..1): round-trip EOT draws and
                      RobustnessCheck's purification use it;
    ``module``        None, or the network behind the encoder (engine.tiling looks in it for GroupNorm layers).
    """

    name: str
    multiple: int
    min_size: int
    device: torch.device
    dtype: torch.dtype
    prepare: Callable[[], None] | None
    decode: Callable[[torch.Tensor], torch.Tensor] | None
    module: torch.nn.Module | None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


@dataclass
class CallableEncoder:
    """Wraps ``fn(pixels_0_1) -> latents`` with the metadata the engine needs.

    ``prepare`` (optional) is called once before a batch of work (e.g. to load the model onto its device).
    ``decode`` (optional) maps this encoder's latents back to pixels 0..1 (a matching decoder), so the
    robustness check can purify through a real VAE round trip and IMPRESS.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str
    multiple: int = 8
    min_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    prepare: Callable[[], None] | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    # the network behind ``fn``, when there is one: tiling (engine.tiling) looks in it for GroupNorm layers
    module: torch.nn.Module | None = None
    # an amortised start learned for this encoder (engine.warmstart.WarmStart), when one was trained for it
    warm_start: torch.nn.Module | None = None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels)
        out = self.fn(pixels.to(device=self.device, dtype=self.dtype))
        return out.float()


def check_pixels(pixels: torch.Tensor) -> None:
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of pixels, got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels shaped [B, 3, H, W], got {list(pixels.shape)}")


class EncoderEnsemble:
    """Several encoders used together; objectives keep one target per member.

    ``weights`` scale each member's share of the loss (default: equal). The ensemble's ``multiple``
    is the least common multiple of its members', its ``min_size`` the largest.
    """

    def __init__(self, members: Sequence[LatentEncoder], weights: Sequence[float] | None = None):
        flat = list(members)
        if any(isinstance(m, EncoderEnsemble) for m in flat):
            raise TypeError("nest ensembles with EncoderEnsemble.extend(), which keeps their weights")
        if not flat:
            raise ValueError("an encoder ensemble needs at least one encoder")
        self.members = flat
        w = list(weights) if weights is not None else [1.0] * len(flat)
        if len(w) != len(flat):
            raise ValueError(f"got {len(w)} weights for {len(flat)} encoders")
        if any(x <= 0 for x in w):
            raise ValueError(f"ensemble weights must be positive, got {w}")
        self.raw_weights = [float(x) for x in w]
        total = float(sum(w))
        self.weights = [float(x) / total for x in w]
        mult = 1
        for m in flat:
            mult = mult * m.multiple // _gcd(mult, m.multiple)
        self.multiple = mult
        self.min_size = max(m.min_size for m in flat)
        self.name = "+".join(m.name for m in flat)

    def extend(self, member: LatentEncoder, weight: float = 1.0) -> "EncoderEnsemble":
        """A new ensemble with one more member (this one is left unchanged)."""
        return EncoderEnsemble(self.members + [member], self.raw_weights + [weight])

    def __len__(self) -> int:
        return len(self.members)

    def prepare(self) -> None:
        for m in self.members:
            if m.prepare is not None:
                m.prepare()


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def as_ensemble(encoder: LatentEncoder | EncoderEnsemble) -> EncoderEnsemble:
    return encoder if isinstance(encoder, EncoderEnsemble) else EncoderEnsemble([encoder])


def module_encoder(module: torch.nn.Module, name: str, multiple: int = 8, min_size: int = 32,
                   scale_to_signed: bool = True) -> CallableEncoder:
    """An encoder from a plain ``nn.Module`` (tests, benchmarks): pixels 0..1, optionally mapped to -1..1."""
    p = next(module.parameters())
    fn = (lambda x: module(x * 2.0 - 1.0)) if scale_to_signed else module
    return CallableEncoder(fn=fn, name=name, multiple=multiple, min_size=min_size,
                           device=p.device, dtype=p.dtype)


def tae_encoder(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                channels_last: bool = True) -> CallableEncoder:
    """A TAESD-family encoder (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2, TAESANA) from its weights file.

    The variant (latent channels, ÷8 or ÷32, FLUX.2's pool branches) is read from the weights (engine.tae).
    Pixels 0..1 in, raw TAE latents out (see engine.tae for the scaling conventions). Where a matching
    ``*_decoder`` file lies beside it, ``decode`` is set, so a real decoder can purify. ``channels_last``
    runs the convolutions (encoder and decoder) in NHWC: about 15 % faster for the encoder on CPU here, 35 % for
    TAEF2's decoder.
    """
    from . import tae

    device = torch.device(device)
    net, info = tae.load(path, "encoder")
    net = net.to(device=device, dtype=dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    decode = None
    dec_path = tae.decoder_path_for(path)
    if dec_path is not None:
        dec, dinfo = tae.load(dec_path, "decoder")
        if dinfo.channels != info.channels or dinfo.factor != info.factor:
            # a decoder of another latent space would silently leave the cloak without its decoded objective
            raise tae.BadTAEFile(
                f"{os.path.basename(dec_path)} beside {os.path.basename(path)} decodes {dinfo.channels}-channel "
                f"latents at 1/{dinfo.factor} scale, but the encoder makes {info.channels}-channel latents at "
                f"1/{info.factor}: they are not a pair. Put the encoder's own decoder beside it (same name with "
                "'decoder'), or remove that file to cloak with the latent objective alone")
        dec = dec.to(device=device, dtype=dtype)
        if channels_last:  # TAEF2's decoder, fwd+bwd at 512² bf16 on 2 CPU cores: 0.91 s -> 0.59 s
            dec = dec.to(memory_format=torch.channels_last)

        def decode(z, _dec=dec):
            z = z.to(device=device, dtype=dtype)
            if channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            return _dec(z).float().clamp(0, 1).contiguous()

    def encode(pixels):
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return net(pixels)

    name = f"{info.variant.split('/')[0]}-{fingerprint(net)}"
    return CallableEncoder(fn=encode, name=name, multiple=info.factor, min_size=max(32, 4 * info.factor),
                           device=device, dtype=dtype, decode=decode, module=net)


def fingerprint(module: torch.nn.Module) -> str:
    """A short stable id of a module's weights (first and last parameter tensors)."""
    import hashlib

    params = list(module.parameters())
    h = hashlib.sha1()
    for p in (params[0], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:10]
