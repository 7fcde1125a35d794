"""The thin glue between ComfyUI objects and the engine: VAEs as encoders, IMAGE layout, progress, Cancel, free
memory, and the start of a cloak job (engine.job) from node inputs."""
from __future__ import annotations

import contextlib
import copy
import logging

import torch

import comfy.model_management as mm
import comfy.utils

from ..engine import Cancelled, CallableEncoder
from ..engine.encoders import EncoderEnsemble, fingerprint, tae_encoder
from ..engine.estimate import long_job_advice
from ..engine.job import CloakJob
from ..engine.optimize import Hooks
from ..engine.precision import weight_dtype

_DECODER_PARTS = ("decoder", "taesd_decoder", "post_quant_conv")
_ENCODER_PARTS = ("encoder", "taesd_encoder")  # the encoder network inside a VAE's model (KL VAEs, TAESD)


def vae_encoder(vae, precision: str = "auto", keep_decoder: bool = True) -> CallableEncoder:
    """A differentiable encoder of *mean* latents from a ComfyUI ``VAE`` (SD1.x/SDXL/SD3/FLUX.1/FLUX.2 KL VAEs,
    TAESD); the pack's one VAE adapter.

    The VAE's model is copied outside inference mode, so gradients can flow to the pixels without touching the VAE
    that ComfyUI shares with the rest of the graph. With ``keep_decoder`` (the default) the copy keeps its decoder
    and ``decode`` is set (ComfyUI's own ``process_output``): GlazePerturb's decoded objective and style term, the
    EOT round trip, the report's perfect-mimic readout, RobustnessCheck's purification and IMPRESS use it; without,
    the decoder is left out of the copy (half the memory). ``module`` is the encoder network, whose layers make the
    decoded style term (engine.objectives.style_stack). Latents are in the same space as ComfyUI's VAE Encode (so a
    LATENT from VAE Encode can serve as a target). ``precision``: engine.precision.WEIGHT_DTYPES. Memory: the copy
    is loaded by ``prepare``, after asking ComfyUI's model management to free three times its size.
    """
    model = getattr(vae, "first_stage_model", None)
    if model is None or not hasattr(model, "encode") or (keep_decoder and not hasattr(model, "decode")):
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
    dtype = weight_dtype(precision, vae.vae_dtype, device)
    memo = {} if keep_decoder else {id(getattr(model, part)): None for part in _DECODER_PARTS
                                    if getattr(model, part, None) is not None}
    with torch.inference_mode(False):
        copied = copy.deepcopy(model, memo).to(dtype=dtype).eval().requires_grad_(False)
    size = sum(p.numel() * p.element_size() for p in copied.parameters())
    process_input, process_output = vae.process_input, vae.process_output
    name = f"{type(model).__name__}-{fingerprint(copied)}"

    def prepare():
        mm.free_memory(size * 3, device)
        copied.to(device)

    def encode(pixels):
        return copied.encode(process_input(pixels))

    def decode(z):
        return process_output(copied.decode(z.to(device, dtype))).float()

    network = next((getattr(copied, part) for part in _ENCODER_PARTS if getattr(copied, part, None) is not None), None)
    return CallableEncoder(fn=encode, name=name, multiple=ratio, min_size=max(32, 4 * ratio),
                           device=device, dtype=dtype, prepare=prepare, decode=decode if keep_decoder else None,
                           module=network)


def tae_encoder_files() -> list[str]:
    """Encoder files of tiny autoencoders in models/vae_approx (decoders are found beside them)."""
    import folder_paths

    return [f for f in folder_paths.get_filename_list("vae_approx") if "encoder" in f.lower()]


def tae_file_encoder(path: str, precision: str = "auto") -> CallableEncoder:
    """A TAE-family encoder (engine.tae) from a weights file, on ComfyUI's device; ``auto``: fp32 on CPU, fp16
    on a GPU (these models were trained for fp16)."""
    device = mm.get_torch_device()
    with torch.inference_mode(False):
        return tae_encoder(path, device, weight_dtype(precision, torch.float16, device))


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


def anchor_to_engine(anchor) -> torch.Tensor:
    """NightshadePoison's anchor (and RobustnessCheck's target): IMAGE ``[N, H, W, C]`` → pixels ``[N, 3, H, W]``;
    LATENT → its samples ``[N, C, h, w]``."""
    if isinstance(anchor, dict):
        samples = anchor.get("samples")
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[0] == 0:
            got = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"anchor: expected an image LATENT batch [B, C, h, w], got {got}")
        with torch.inference_mode(False):
            return samples.float().clone()
    return image_to_engine(anchor, "anchor")


def planned_job(pixels: torch.Tensor, alpha: torch.Tensor | None, encoder: EncoderEnsemble, settings,
                title: str) -> CloakJob:
    """A cloak job for engine ``pixels`` (with the IMAGE's ``alpha``: fully transparent pixels stay as they are),
    planned against the free memory of the encoder's device once the encoder is loaded; the estimate is logged,
    and a job that cannot fit is refused (ValueError) before any work."""
    job = CloakJob(pixels, encoder, settings, keep=None if alpha is None else alpha > 0)
    free = mm.get_free_memory(job.device)
    with grad_work():
        estimate = job.plan(free)
    logging.info("%s: %s; %.2f GiB free on %s", title, estimate.describe(), free / 2**30, job.device)
    advice = long_job_advice(estimate, job.decoded)
    if advice is not None:
        logging.warning("%s: %s", title, advice)
    return job


def alpha_notes(alpha: torch.Tensor | None) -> list[str]:
    return [] if alpha is None else ["alpha kept; fully transparent pixels left unchanged"]


def job_hooks(job: CloakJob) -> Hooks:
    """ComfyUI's progress bar over the job's steps and its Cancel."""
    bar = comfy.utils.ProgressBar(job.images.shape[0] * job.settings.steps)

    def on_progress(done, total):
        bar.update_absolute(done, total)

    return Hooks(on_progress=on_progress, should_stop=mm.processing_interrupted)
