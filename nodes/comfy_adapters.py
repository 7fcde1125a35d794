"""The thin glue between ComfyUI objects and the engine: VAEs as encoders, IMAGE layout, progress, Cancel."""
from __future__ import annotations

import contextlib
import copy

import torch

import comfy.model_management as mm
import comfy.utils

from ..engine import Cancelled, CallableEncoder
from ..engine.encoders import fingerprint, tae_encoder

PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DECODER_PARTS = ("decoder", "taesd_decoder", "post_quant_conv")


def vae_encoder(vae, precision: str = "auto") -> CallableEncoder:
    """A differentiable encoder of *mean* latents from a ComfyUI ``VAE`` (SD1.x/SDXL/SD3/FLUX KL VAEs, TAESD).

    The encoder half is copied (decoder left out) outside inference mode, so gradients can flow to the
    pixels without touching the VAE that ComfyUI shares with the rest of the graph. Latents are in the
    same space as ComfyUI's VAE Encode (so a LATENT from VAE Encode can serve as a target).
    """
    model = getattr(vae, "first_stage_model", None)
    if model is None or not hasattr(model, "encode"):
        raise ValueError(f"expected a VAE from Load Checkpoint or VAE Loader, got {type(vae).__name__}")
    ratio = getattr(vae, "downscale_ratio", 8)
    if type(model).__name__ == "PixelspaceConversionVAE" or ratio == 1:
        raise ValueError(f"vae: {type(model).__name__} (VAE Loader's 'pixel_space') is not an encoder: it passes "
                         "pixels through unchanged, so a cloak against it means nothing. Load the VAE of the model "
                         "you want to protect against (e.g. from Load Checkpoint, or a file in models/vae)")
    if not isinstance(ratio, int) or getattr(vae, "latent_dim", 2) != 2:
        raise ValueError("this VAE is a video or audio VAE; cloaking needs an image VAE "
                         "(SD1.x, SDXL, SD3, FLUX or a TAESD)")
    device = mm.get_torch_device()
    dtype = encoder_dtype(precision, vae.vae_dtype, device)
    memo = {id(getattr(model, part)): None for part in _DECODER_PARTS if getattr(model, part, None) is not None}
    with torch.inference_mode(False):
        encoder = copy.deepcopy(model, memo).to(dtype=dtype).eval().requires_grad_(False)
    size = sum(p.numel() * p.element_size() for p in encoder.parameters())
    process_input = vae.process_input
    name = f"{type(model).__name__}-{fingerprint(encoder)}"

    def prepare():
        mm.free_memory(size * 3, device)
        encoder.to(device)

    def encode(pixels):
        return encoder.encode(process_input(pixels))

    return CallableEncoder(fn=encode, name=name, multiple=ratio, min_size=max(32, 4 * ratio),
                           device=device, dtype=dtype, prepare=prepare)


def tae_encoder_files() -> list[str]:
    """Encoder files of tiny autoencoders in models/vae_approx (decoders are found beside them)."""
    import folder_paths

    return [f for f in folder_paths.get_filename_list("vae_approx") if "encoder" in f.lower()]


def tae_file_encoder(path: str, precision: str = "auto") -> CallableEncoder:
    """A TAE-family encoder (engine.tae) from a weights file, on ComfyUI's device; ``auto``: fp32 on CPU, fp16
    on a GPU (these models were trained for fp16)."""
    device = mm.get_torch_device()
    with torch.inference_mode(False):
        return tae_encoder(path, device, encoder_dtype(precision, torch.float16, device))


def encoder_dtype(precision: str, auto: torch.dtype, device: torch.device) -> torch.dtype:
    """The encoder's dtype for a ``precision`` choice (``auto``: ``auto``); fp16 falls back to fp32 on a CPU,
    where fp16 convolutions are not implemented on every build."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    dtype = PRECISIONS[precision] or auto
    return torch.float32 if device.type == "cpu" and dtype == torch.float16 else dtype


def image_to_engine(image, what: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` → engine pixels ``[B, 3, H, W]`` float32 (a normal, grad-able copy)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what}: expected an IMAGE, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an IMAGE shaped [batch, height, width, 3], got {list(image.shape)}; "
                         "is a mask or latent wired here?")
    if image.shape[0] == 0:
        raise ValueError(f"{what}: the batch is empty; connect at least one image")
    if not image.is_floating_point():
        raise TypeError(f"{what}: expected a float IMAGE with values in 0..1, got dtype {image.dtype}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{what}: contains NaN or infinite values; check the node that made it")
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    with torch.inference_mode(False):
        return image[..., :3].movedim(-1, 1).float().clone().clamp(0, 1)


def image_alpha(image) -> torch.Tensor | None:
    """The alpha channel of an RGBA IMAGE as ``[B, 1, H, W]`` float32 (None for RGB or grey images)."""
    if not isinstance(image, torch.Tensor) or image.shape[-1] != 4:
        return None
    image = image[None] if image.ndim == 3 else image
    with torch.inference_mode(False):
        return image[..., 3:].movedim(-1, 1).float().clone()


def image_to_comfy(pixels: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Engine pixels ``[B, 3, H, W]`` (+ alpha ``[B, 1, H, W]``, passed through) → IMAGE ``[B, H, W, 3 or 4]``."""
    if alpha is not None:
        pixels = torch.cat([pixels.detach().float().cpu(), alpha.detach().float().cpu()], 1)
    return pixels.detach().movedim(1, -1).to(mm.intermediate_device()).float().contiguous()


def perturbation_preview(original: torch.Tensor, cloaked: torch.Tensor) -> torch.Tensor:
    """The change, amplified to full range around grey, per image (engine layout in, ComfyUI layout out)."""
    d = cloaked - original
    scale = d.abs().flatten(1).amax(1).clamp_min(1 / 255).view(-1, 1, 1, 1)
    return image_to_comfy((0.5 + 0.5 * d / scale).clamp(0, 1))


@contextlib.contextmanager
def grad_work():
    """Autograd on inside ComfyUI's inference-mode execution; Cancel turned into ComfyUI's interrupt."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    except Cancelled:
        mm.throw_exception_if_processing_interrupted()
        raise


def progress_callbacks(total_hint: int):
    """``(on_progress, should_stop)`` for the engine, driving ComfyUI's progress bar and Cancel."""
    bar = comfy.utils.ProgressBar(total_hint)

    def on_progress(done, total):
        bar.update_absolute(done, total)

    return on_progress, mm.processing_interrupted
