"""Tiny autoencoders of the TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2, TAESANA), built from their weights.

Written here from the public description of Ollin Boer Bohan's tiny autoencoders (github madebyollin/taesd,
MIT): plain ``nn.Sequential`` stacks of 3×3 convolutions and 64-channel residual ``Block``s
(conv → ReLU → conv → ReLU → conv, added to the input, then ReLU). The variant is read from the state dict
itself, never from a file name:

- an **encoder** starts with a convolution from 3 pixel channels and ends with one to the latent channels
  (4 for SD/SDXL, 16 for SD3/FLUX.1, 32 for FLUX.2 and Sana); its stride-2 convolutions are the bias-free
  ones (TAESD, TAEF2: ÷8) plus, in Sana's ÷32 encoder, the stem convolutions that a ReLU follows;
- a **decoder** starts from the latent channels (``tanh(z/3)·3`` first), doubles the size before each
  bias-free convolution and ends with a convolution to 3 pixel channels;
- FLUX.2's deep blocks carry a "pool" branch, conv1×1(64→256) → GroupNorm(4) → ReLU → conv1×1(256→64),
  added to the block's input before the block.

Latent conventions: pixels go in as ``[B, 3, H, W]`` in **0..1** (not -1..1); latents come out *raw*, i.e. in
the space the diffusion model itself works in (ComfyUI's ``VAE Encode`` gives ``raw / scale + shift`` with
scale 0.18215 for SD1.x's TAESD, 0.13025 SDXL, 1.5305/0.0609 SD3, 0.3611/0.1159 FLUX.1; TAEF2's and TAESANA's
raw latents are roughly unit variance already). Distances in the engine are taken on the raw latents.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

_PREFIXES = ("taesd_encoder.", "taesd_decoder.", "encoder.", "decoder.", "first_stage_model.")
_INDEX = re.compile(r"^(\d+)\.(.+)$")


class Clamp(nn.Module):
    """``tanh(z/3)·3``: the decoders' soft clamp of the latent."""

    def forward(self, z):
        return torch.tanh(z / 3) * 3


def pool_branch(n: int = 64, hidden: int = 256, groups: int = 4) -> nn.Sequential:
    """FLUX.2's extra branch of the deep blocks: 1×1 convs through ``hidden`` GroupNorm'd channels."""
    return nn.Sequential(nn.Conv2d(n, hidden, 1, bias=False), nn.GroupNorm(groups, hidden), nn.ReLU(),
                         nn.Conv2d(hidden, n, 1, bias=False))


class Block(nn.Module):
    """Residual block: ``relu(conv(relu(conv(relu(conv(x))))) + x)``, with an optional pool branch first."""

    def __init__(self, n: int = 64, pool_hidden: int = 0):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(n, n, 3, padding=1))
        self.pool = pool_branch(n, pool_hidden) if pool_hidden else None
        self.fuse = nn.ReLU()

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


@dataclass(frozen=True)
class TAEInfo:
    """What the weights say: ``kind`` "encoder"/"decoder", latent ``channels``, spatial ``factor``, ``pooled``."""

    kind: str
    channels: int
    factor: int
    pooled: bool

    @property
    def variant(self) -> str:
        if self.channels == 32:
            return "taesana" if self.factor == 32 else ("taef2" if self.pooled else "tae-32ch")
        return {4: "taesd/taesdxl", 16: "taesd3/taef1"}.get(self.channels, f"tae-{self.channels}ch")


class BadTAEFile(ValueError):
    """The file is not a TAESD-family encoder/decoder of the kind asked for."""


def strip_prefix(sd: dict, kind: str) -> dict:
    """Keys as ``nn.Sequential`` indices (``0.weight``, ``1.conv.0.weight``): drop a known prefix, and where a
    file holds both halves keep the one asked for."""
    wanted = "taesd_encoder." if kind == "encoder" else "taesd_decoder."
    if any(k.startswith(wanted) for k in sd):
        return {k[len(wanted):]: v for k, v in sd.items() if k.startswith(wanted)}
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def _layers(sd: dict, what: str) -> dict[int, dict]:
    layers: dict[int, dict] = {}
    bad = []
    for k, v in sd.items():
        m = _INDEX.match(k)
        if not m or not isinstance(v, torch.Tensor):
            bad.append(k)
            continue
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if bad or not layers:
        found = ", ".join(sorted(sd)[:6]) + (" …" if len(sd) > 6 else "")
        raise BadTAEFile(f"{what}: not a TAESD-family file: expected keys like '0.weight', '1.conv.0.weight'; "
                         f"found {len(sd)} keys ({found or 'none'})")
    return layers


def _conv_of(layer: dict):
    w = layer.get("weight")
    return w if isinstance(w, torch.Tensor) and w.ndim == 4 else None


def inspect(sd: dict, what: str = "weights") -> TAEInfo:
    """Read the variant from a (prefix-stripped) state dict; :class:`BadTAEFile` if it is neither half."""
    layers = _layers(sd, what)
    convs = [(i, _conv_of(layers[i])) for i in sorted(layers) if _conv_of(layers[i]) is not None]
    if not convs:
        raise BadTAEFile(f"{what}: no convolution layers found (keys {sorted(sd)[:4]})")
    first, last = convs[0][1], convs[-1][1]
    pooled = any("pool.0.weight" in layers[i] for i in layers)
    if first.shape[1] == 3 and last.shape[0] != 3:
        strides = sum(1 for i, _ in convs if _stride(layers, i) == 2)
        return TAEInfo("encoder", int(last.shape[0]), 2 ** strides, pooled)
    if last.shape[0] == 3 and first.shape[1] != 3:
        ups = sum(1 for i in range(max(layers) + 1) if i not in layers and i > 0 and _before_biasfree(layers, i))
        return TAEInfo("decoder", int(first.shape[1]), 2 ** ups, pooled)
    raise BadTAEFile(f"{what}: first convolution takes {first.shape[1]} channels and the last gives "
                     f"{last.shape[0]}: neither a TAE encoder (3 → latent) nor a decoder (latent → 3)")


def _stride(layers: dict, i: int) -> int:
    """Encoder convs: bias-free ones downsample; so do stem convs that a ReLU (a gap in the indices) follows."""
    if "bias" not in layers[i]:
        return 2
    last = max(layers)
    return 2 if i != last and (i + 1) not in layers else 1


def _before_biasfree(layers: dict, i: int) -> bool:
    nxt = layers.get(i + 1)
    return nxt is not None and _conv_of(nxt) is not None and "bias" not in nxt


def build(sd: dict, kind: str, what: str = "weights") -> tuple[nn.Sequential, TAEInfo]:
    """Build the ``kind`` ("encoder" or "decoder") half from its state dict and load the weights (float32).

    Raises :class:`BadTAEFile` naming what was found when the file is the other half or not a TAE at all.
    """
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
    sd = strip_prefix(sd, kind)
    info = inspect(sd, what)
    if info.kind != kind:
        raise BadTAEFile(f"{what}: this is a TAE {info.kind} ({info.channels} latent channels), not a TAE {kind}: "
                         f"choose the matching *_{kind} file (this one serves as the {info.kind})")
    layers = _layers(sd, what)
    mods: list[nn.Module] = []
    for i in range(max(layers) + 1):
        layer = layers.get(i)
        if layer is None:
            if kind == "decoder" and i == 0:
                mods.append(Clamp())
            elif kind == "decoder" and _before_biasfree(layers, i):
                mods.append(nn.Upsample(scale_factor=2))
            else:
                mods.append(nn.ReLU())
        elif "conv.0.weight" in layer:
            n = layer["conv.0.weight"].shape[0]
            hidden = layer["pool.0.weight"].shape[0] if "pool.0.weight" in layer else 0
            mods.append(Block(n, hidden))
        else:
            w = _conv_of(layer)
            if w is None:
                raise BadTAEFile(f"{what}: layer {i} has keys {sorted(layer)}, expected a convolution or a Block")
            stride = _stride(layers, i) if kind == "encoder" else 1
            mods.append(nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], stride=stride, padding=w.shape[-1] // 2,
                                  bias="bias" in layer))
    net = nn.Sequential(*mods)
    try:
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise BadTAEFile(f"{what}: the weights do not fit a TAE {kind} ({e})") from None
    return net.eval().requires_grad_(False), info


MAX_TAE_BYTES = 256 * 2**20  # the largest file taken for a TAE half (they are 1-10 MiB)


def check_safetensors_keys(path: str, name: str) -> None:
    """Refuse a ``.safetensors`` file whose header names no TAE layer, from the header alone (no tensor is read)."""
    import safetensors
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except Exception as e:  # a header that is no JSON, a length past the file's end, ...
        raise BadTAEFile(f"{name}: not a readable weights file: truncated or corrupt ({type(e).__name__}); "
                         "download it again or remove it from models/vae_approx") from None
    stripped = [k for kind in ("encoder", "decoder") for k in strip_prefix(dict.fromkeys(keys), kind)]
    if not any(_INDEX.match(k) for k in stripped):
        found = ", ".join(sorted(keys)[:6]) + (" …" if len(keys) > 6 else "")
        raise BadTAEFile(f"{name}: not a TAESD-family file: expected keys like '0.weight', '1.conv.0.weight'; "
                         f"found {len(keys)} keys ({found or 'none'})")


def load_state_dict(path: str) -> dict:
    """A ``.pth``/``.pt`` (torch, weights only) or ``.safetensors`` file as a state dict of finite float tensors.

    Anything else is refused with :class:`BadTAEFile` naming the file and saying what to do: a truncated or corrupt
    file, a pickle that carries code (never loaded: it could run code on this machine), a file of other objects,
    integer or NaN/inf weights. PyTorch's own advice for pickles (to load them unrestricted) is never passed on."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    size = os.path.getsize(path)
    if size > MAX_TAE_BYTES:  # refused before a byte of it is read: a wrong file must not fill the memory first
        raise BadTAEFile(f"{name}: {size / 2**20:,.0f} MiB, where TAESD-family files are a few MiB (TAEF2's halves "
                         f"2.6 MiB each; the limit here is {MAX_TAE_BYTES // 2**20} MiB): not a TAE. A full-size VAE "
                         "belongs in models/vae (wire it with Load VAE or the vae_name input)")
    if path.endswith(".safetensors"):
        check_safetensors_keys(path, name)
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch
            sd = safetensors.torch.load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadTAEFile(f"{name}: not a plain weights file: it holds pickled Python objects or code besides tensors, "
                         "so it was refused for safety (loading it could run code on this machine). Use the "
                         "model's .safetensors file, or a plain state-dict .pth from a source you trust") from None
    except Exception as e:  # zip/format errors of a truncated or corrupt file (RuntimeError, SafetensorError, ...)
        raise BadTAEFile(f"{name}: not a readable weights file: truncated or corrupt ({type(e).__name__}); "
                         "download it again or remove it from models/vae_approx") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BadTAEFile(f"{name}: expected a state dict (names to tensors), found a {type(sd).__name__}; "
                         "use the encoder's or decoder's own weights file")
    for key, value in sd.items():
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            raise BadTAEFile(f"{name}: weight {key!r} is {value.dtype}, not a float tensor: not a TAE weights file; "
                             "download the TAE again")
        if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
            raise BadTAEFile(f"{name}: weight {key!r} contains NaN or infinite values (a broken file or a failed "
                             "training run); a cloak against it would be NaN. Download it again")
    return sd


def load(path: str, kind: str = "encoder") -> tuple[nn.Sequential, TAEInfo]:
    """Build a TAE ``kind`` from a weights file."""
    return build(load_state_dict(path), kind, what=os.path.basename(path))


def decoder_path_for(encoder_path: str) -> str | None:
    """The matching decoder beside an encoder file (``x_encoder.pth`` → ``x_decoder.pth``), if present."""
    base = os.path.basename(encoder_path)
    if "encoder" not in base:
        return None
    candidate = os.path.join(os.path.dirname(encoder_path), base.replace("encoder", "decoder"))
    return candidate if os.path.isfile(candidate) else None


__all__ = ["Block", "Clamp", "TAEInfo", "BadTAEFile", "build", "inspect", "load", "load_state_dict",
           "decoder_path_for", "strip_prefix"]
