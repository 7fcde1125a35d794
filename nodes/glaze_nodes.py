"""GlazePerturb: Glaze-style cloaking against style mimicry (Shan et al., USENIX Security 2023)."""
from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io

from ..engine import as_ensemble, cloak_images, format_report, latent_sizes, objective_for_target, settings_for
from ..engine.cloak import INTENSITY, RENDER_QUALITY, check_images
from ..engine.estimate import estimate_cost, fits_in_memory, probe, refusal_message
from ..engine.transforms import ROBUSTNESS_LEVELS
from .cloak_types import CloakEncoder, StyleTarget
from .comfy_adapters import (grad_work, image_alpha, image_to_comfy, image_to_engine, perturbation_preview,
                             progress_callbacks)

BUDGETS = ("adaptive", "linf", "lpips")


def cloak_inputs() -> list:
    """The inputs GlazePerturb and NightshadePoison share (same names, same presets)."""
    return [
        io.Combo.Input("intensity", options=list(INTENSITY) + ["custom"], default="default",
                       tooltip="How much the image may change. low: PSNR ≥ 38 dB, SSIM ≥ 0.96; default: PSNR ≥ 35 dB, "
                               "SSIM ≥ 0.93; high: PSNR ≥ 32 dB, SSIM ≥ 0.87 (more protection, more visible). "
                               "A pixel moves at most 12 / 20 / 32 of 255 (in busy texture; flat areas a tenth). "
                               "custom: at most custom_budget/255 per pixel, no PSNR/SSIM floor."),
        io.Combo.Input("render_quality", options=list(RENDER_QUALITY), default="default",
                       tooltip="How long to compute: faster = 50, default = 100, slowest = 300 optimisation "
                               "steps per image. Longer gives a stronger cloak at the same intensity."),
        io.Combo.Input("robustness", options=list(ROBUSTNESS_LEVELS), default="on",
                       tooltip="Optimise in expectation over JPEG, resizing, blur, noise and crops so the cloak "
                               "survives them. strong: harsher transforms, twice the compute. off: fastest, "
                               "but the cloak is easily washed out by re-saving or resizing."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                     tooltip="Seed of the random transforms; image i of a batch uses seed + i. Same seed, same "
                             "input, same device: same output."),
        io.Int.Input("custom_budget", default=8, min=1, max=64,
                     tooltip="Largest change of any pixel, in 1/255 steps, when intensity is custom."),
        io.Combo.Input("budget", options=list(BUDGETS), default="adaptive",
                       tooltip="Where change may go. adaptive: into texture, sparing flat colours and smooth "
                               "backgrounds (recommended). linf: the same cap everywhere. lpips: Glaze's "
                               "perceptual penalty; needs the lpips package and its downloaded weights."),
    ]


def check_cost(pixels, encoder, settings, title: str) -> str:
    """Estimate memory and time up front (engine.estimate); log it; refuse what cannot fit in free memory."""
    check_images(pixels, encoder)
    encoder.prepare()
    device = encoder.members[0].device
    eot = ROBUSTNESS_LEVELS[settings.robustness]
    with grad_work():
        probed = probe(encoder)
    cost = estimate_cost(probed, *pixels.shape[-2:], pixels.shape[0], settings.steps, encoder.multiple,
                         getattr(eot, "samples", 1), getattr(eot, "clean_weight", 0.0) > 0)
    free = mm.get_free_memory(device)
    logging.info("%s: %s; %.2f GiB free on %s", title, cost.describe(), free / 2**30, device)
    if not fits_in_memory(cost, free):
        raise ValueError(refusal_message(cost, free, *pixels.shape[-2:]))
    return cost.describe()


def run_cloak(image, encoder, make_objective, intensity, render_quality, robustness, seed, custom_budget,
              budget, title, estimate: str | None = None):
    """Shared execute body: ComfyUI types in, (cloaked IMAGE, preview IMAGE, report, engine reports) out.

    An RGBA IMAGE keeps its alpha channel untouched, and its fully transparent pixels are never changed.
    ``estimate``: the cost line when the caller already ran :func:`check_cost`."""
    encoder = as_ensemble(encoder)
    pixels = image_to_engine(image)
    alpha = image_alpha(image)
    settings = settings_for(intensity, render_quality, robustness, custom_budget / 255, budget)
    estimate = estimate or check_cost(pixels, encoder, settings, title.split(" ")[0])
    on_progress, should_stop = progress_callbacks(pixels.shape[0] * settings.steps)
    with grad_work():
        result = cloak_images(pixels, encoder, make_objective, settings, seed=seed,
                              on_progress=on_progress, should_stop=should_stop,
                              keep=None if alpha is None else alpha > 0)
    notes = [estimate] + (["alpha kept; fully transparent pixels left unchanged"] if alpha is not None else [])
    report = format_report(result.reports, f"{title} | intensity {intensity}, render quality {render_quality}, "
                                           f"robustness {robustness}, budget {budget}, encoder {encoder.name}",
                           notes)
    return (image_to_comfy(result.images, alpha), perturbation_preview(pixels, result.images), report,
            result.reports)


class GlazePerturb(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GlazePerturb",
            display_name="Glaze Perturb (Cloak)",
            category="cloak",
            description="Cloaks artwork against style mimicry: a small, computed change that moves what the "
                        "encoder sees toward the target style, so a LoRA trained on it learns that style "
                        "instead of yours.",
            inputs=[
                io.Image.Input("image", tooltip="The artwork to cloak (a batch: each image gets its own cloak)."),
                CloakEncoder.Input("encoder", tooltip="From LoadVAEEncoder: the model(s) to cloak against."),
                StyleTarget.Input("style_target", tooltip="From StyleTargetLatents, made with the same encoder."),
                *cloak_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="cloaked", tooltip="The cloaked artwork, on 8-bit levels: save it as PNG "
                                                                 "(JPEG re-compression weakens the cloak)."),
                io.Image.Output(display_name="perturbation",
                                tooltip="The change, amplified to be visible (grey = unchanged)."),
                io.String.Output(display_name="report", tooltip="PSNR, SSIM, target gain and seconds per image."),
            ],
        )

    @classmethod
    def execute(cls, image, encoder, style_target, intensity, render_quality, robustness, seed,
                custom_budget, budget) -> io.NodeOutput:
        ensemble = as_ensemble(encoder)

        def make_objective(i, padded):
            return objective_for_target(ensemble, style_target, i, latent_sizes(ensemble, padded))

        cloaked, preview, report, _ = run_cloak(image, ensemble, make_objective, intensity, render_quality,
                                                robustness, seed, custom_budget, budget, "GlazePerturb")
        return io.NodeOutput(cloaked, preview, report)
