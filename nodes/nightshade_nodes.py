"""NightshadePoison: concept poisoning (Shan et al., IEEE S&P 2024) against training on unlicensed images.

The engine (engine/nightshade.py) knows the diffusion model only as two callables; this module builds them
from a ComfyUI MODEL + CONDITIONING with ComfyUI's own sampling set-up (CFGGuider: conditioning conversion,
model loading through comfy.model_management, patches, hooks and wrappers), so any model ComfyUI samples
with is used as it is loaded.
"""
from __future__ import annotations

import logging

import torch

import comfy.samplers
from comfy_api.latest import io

from ..engine import CloakOptions, as_ensemble
from ..engine.nightshade import (OBJECTIVES, NoisePredictor, format_pairing, plan_poison, poison,
                                teaches_nothing_warning)
from .comfy_adapters import (alpha_notes, anchor_to_engine, grad_work, image_alpha, image_to_comfy, image_to_engine,
                             job_hooks, perturbation_preview, planned_job)
from .schema import CloakEncoder, cloak_inputs, scale_inputs

NOISE_WIRING = ("objective 'noise' needs the diffusion model: connect 'model' (MODEL from Load Checkpoint) and "
                "'positive' (CONDITIONING from CLIP Text Encode of the caption), or choose objective 'latent'")


def captions_for(caption: str, count: int) -> list[str]:
    """One caption per image: a single line serves every image; otherwise one line per image."""
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a string, got {type(caption).__name__}")
    lines = [line.strip() for line in caption.splitlines() if line.strip()]
    if not lines:
        raise ValueError("caption is empty: write the caption of the poisoned concept A, e.g. 'a photo of a cow'")
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ValueError(f"caption has {len(lines)} lines for {count} images: give one line for all images "
                         "or exactly one line per image")
    return lines


def _fresh_copy(weight):
    # A weight wrapper makes ComfyUI's cast layers hand out a copy of each weight made outside inference
    # mode; the loaded weights themselves are inference tensors, which autograd cannot save for backward.
    return weight


class _PoisonSampler(comfy.samplers.Sampler):
    """A "sampler" that runs the poisoning once ComfyUI has prepared the model and the conditioning."""

    def __init__(self, work):
        self.work = work
        self.result = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.result = self.work(noise_predictor(model_wrap, extra_args, noise.device))
        return latent_image


def noise_predictor(guider, extra_args, device) -> NoisePredictor:
    """The engine's view of the model inside a running CFGGuider (cfg 1: the positive conditioning only)."""
    inner = guider.inner_model
    sampling = inner.model_sampling
    options, seed = extra_args.get("model_options", {}), extra_args.get("seed")

    def predict(latents, sigmas, noise):
        z = inner.process_latent_in(latents.to(device))
        s = sigmas.to(device=device, dtype=torch.float32)
        x = sampling.noise_scaling(s, noise.to(device=device, dtype=z.dtype), z)
        denoised = guider(x, s, model_options=options, seed=seed)
        # x = a·noise + b·latent by the model's own rule (EPS, v, flow, ...): recover the predicted noise
        ones, zeros = torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :1])
        a = sampling.noise_scaling(s, ones, zeros.clone())
        b = sampling.noise_scaling(s, zeros.clone(), ones)
        return (x - b * denoised) / a

    def sigmas_from_uniform(u):
        return torch.tensor([float(sampling.percent_to_sigma(float(p))) for p in u])

    return NoisePredictor(predict, sigmas_from_uniform, inner.latent_format.latent_channels, type(inner).__name__)


def with_diffusion_model(model, positive, latent_size, work):
    """``work(predictor)`` inside ComfyUI's sampling set-up for ``model`` under ``positive``; returns its result."""
    if not hasattr(model, "clone") or not hasattr(model, "get_model_object"):
        raise ValueError(f"model: expected a MODEL from Load Checkpoint, got {type(model).__name__}")
    if not isinstance(positive, list) or not positive:
        raise ValueError("positive: expected a CONDITIONING from CLIP Text Encode (of the caption)")
    patcher = model.clone()
    for name, module in patcher.model.named_modules():
        if hasattr(module, "weight_function"):
            for part in ("weight", "bias"):
                if getattr(module, part, None) is not None:
                    patcher.add_weight_wrapper(f"{name}.{part}", _fresh_copy)
    sampling = patcher.get_model_object("model_sampling")
    channels = patcher.model.latent_format.latent_channels
    guider = comfy.samplers.CFGGuider(patcher)
    guider.inner_set_conds({"positive": positive})
    sampler = _PoisonSampler(work)
    latent = torch.zeros(1, channels, *latent_size)
    sigmas = torch.tensor([float(sampling.sigma_max), 0.0])
    try:
        guider.sample(latent.clone(), latent, sampler, sigmas, seed=0)
    except RuntimeError as e:
        if "Inference tensors" in str(e):
            raise RuntimeError(f"{type(patcher.model).__name__} has weights outside ComfyUI's cast layers, so the "
                               "noise objective cannot differentiate through it; choose objective 'latent'") from e
        raise
    return sampler.result


class NightshadePoison(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NightshadePoison",
            display_name="Nightshade Poison (Cloak)",
            category="cloak",
            description="Turns images of concept A into poison samples: captioned A, but seen by the model as "
                        "the anchor's concept B, so a model trained on enough of them draws B when asked for A. "
                        "What the presets buy, measured on TAEF2 (a real FLUX.2-space encoder, 16 photos, 128²): "
                        "every poisoned latent moves toward the anchor, but it ends nearer the anchor's latent "
                        "than its own original's for 3/16 at low, 7/16 at default and 11/16 at high; the report "
                        "says which images crossed. Judged by a miniature model trained here on 5 concepts "
                        "(bench/bench_poison.py, 3 seeds): neither default nor high taught it to draw B for A at 25 % "
                        "or 50 % of A's images (mislabelled images did: 0.19 / 0.53); the poison made its A worse. "
                        "The reason is the encoder: TAEF2's latent barely steers (at 32 dB even an unconstrained "
                        "optimisation moves it 0.37-0.50 of the way to another concept's), so on TAEF2 no budget "
                        "an artist would accept teaches B. The method targets encoders that small changes move "
                        "far (SD's VAE); not measured on SD or FLUX models.",
            inputs=[
                io.Image.Input("image", tooltip="Your images of concept A (a batch: each image is poisoned on its own)."),
                CloakEncoder.Input("encoder", tooltip="From LoadVAEEncoder: the VAE(s) of the models to poison. "
                                                      "For objective noise, the model's own VAE."),
                io.MultiType.Input("anchor", types=[io.Image, io.Latent],
                                   tooltip="Concept B: images (e.g. Empty Latent → KSampler 'a photo of a "
                                           "handbag' → VAE Decode) or that LATENT (single encoder only). With "
                                           "several, each image gets the anchor nearest its own latent."),
                io.String.Input("caption", default="a photo of a cow", multiline=True,
                                tooltip="The caption of concept A that the poison samples carry: one line for "
                                        "all images, or one line per image."),
                *cloak_inputs(),
                io.Combo.Input("objective", options=list(OBJECTIVES), default="latent",
                               tooltip="latent: match the encoder latent of the anchor (the paper's "
                                       "formulation; any encoder, ensembles too). noise: match the diffusion "
                                       "model's predicted noise on the anchor under 'positive', at timesteps "
                                       "from the model's schedule; needs model and positive; slower."),
                io.Model.Input("model", optional=True,
                               tooltip="For objective noise: the diffusion model (MODEL from Load Checkpoint)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="For objective noise: CLIP Text Encode of the caption (concept A)."),
                *scale_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="poisoned", tooltip="The poison samples, on 8-bit levels (save as PNG)."),
                io.String.Output(display_name="caption", is_output_list=True,
                                 tooltip="One caption per image (a list), for Save Poison Dataset or "
                                         "Make Training Dataset."),
                io.Image.Output(display_name="perturbation",
                                tooltip="The change, amplified to be visible (grey = unchanged)."),
                io.String.Output(display_name="report",
                                 tooltip="Which anchor each image got, how far its latent moved, PSNR, SSIM."),
            ],
        )

    @classmethod
    def execute(cls, image, encoder, anchor, caption, intensity, render_quality, robustness, seed, custom_budget,
                budget, objective, model=None, positive=None, tile_size=0, pass_precision="auto") -> io.NodeOutput:
        if objective == "noise" and (model is None or positive is None):
            raise ValueError(NOISE_WIRING)
        options = CloakOptions(intensity, render_quality, robustness, custom_budget, budget, tile_size, pass_precision,
                               kind="nightshade")
        ensemble = as_ensemble(encoder)
        pixels, alpha = image_to_engine(image), image_alpha(image)
        captions = captions_for(caption, pixels.shape[0])
        job = planned_job(pixels, alpha, ensemble, options.settings(), "NightshadePoison")  # before encoding anything
        with grad_work():
            plan = plan_poison(ensemble, job.padded(), anchor_to_engine(anchor))
        hooks = job_hooks(job)

        def work(predictor=None):
            with grad_work():
                return poison(job, plan, objective, predictor, seed, hooks)

        if objective == "noise":
            result = with_diffusion_model(model, positive, plan.image_latents[0].shape[-2:], work)
        else:
            result = work()
        title = f"NightshadePoison ({objective} objective) | {options.describe()}, encoder {ensemble.name}"
        report = (job.report(result.cloak, title, alpha_notes(alpha)) + "\n"
                  + format_pairing(result.checks, plan.anchor_latents[0].shape[0]))
        warning = teaches_nothing_warning(result.cloak.reports)
        if warning is not None:
            logging.warning("NightshadePoison | %s", warning)
            report = warning + "\n\n" + report
        poisoned = result.cloak.images
        return io.NodeOutput(image_to_comfy(poisoned, alpha), captions, perturbation_preview(pixels, poisoned), report)
