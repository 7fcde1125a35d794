"""GlazePerturb: Glaze-style cloaking against style mimicry (Shan et al., USENIX Security 2023)."""
from __future__ import annotations

import dataclasses
import logging

import comfy.model_management as mm
from comfy_api.latest import io

from ..engine import as_ensemble, cloak_images, format_report, latent_sizes, objective_for_target, settings_for
from ..engine.cloak import INTENSITY, RENDER_QUALITY, check_images, tile_side
from ..engine.estimate import estimate_cost, fits_in_memory, max_tile_side, probe, refusal_message
from ..engine.precision import PRECISIONS
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


def scale_inputs() -> list:
    """Inputs for big images: added last and optional, so saved workflows (UI and API format alike) keep working
    with the automatic defaults."""
    return [
        io.Int.Input("tile_size", default=0, min=0, max=8192, step=16, optional=True,
                     tooltip="Advanced. 0 = automatic: images over 512x512 (CPU) or 2048x2048 (GPU) are cloaked "
                             "in tiles of about that size, smaller where free memory is short, so any size fits "
                             "in bounded memory (the change is still one whole-image change: no seams). A number "
                             "sets the tile side in pixels; a side at least the image's runs it in one piece."),
        io.Combo.Input("pass_precision", options=list(PRECISIONS), default="auto", optional=True,
                       tooltip="Advanced. Precision of the encoder passes while the cloak is computed (the change "
                               "itself, its steps and the report stay fp32). auto: bf16 where the hardware has "
                               "it natively (GPUs; CPUs with AVX512-BF16 or AMX: about 2x faster, protection "
                               "within 1 %), else fp32. fp16 is for GPUs only."),
    ]


def check_cost(pixels, encoder, settings, title: str) -> tuple[str, int]:
    """Estimate memory and time up front (engine.estimate); log it; refuse what cannot fit in free memory even
    in tiles. Returns the estimate line and the largest tile side the free memory allows."""
    check_images(pixels, encoder)
    encoder.prepare()
    device = encoder.members[0].device
    eot = ROBUSTNESS_LEVELS[settings.robustness]
    samples, clean = getattr(eot, "samples", 1), getattr(eot, "clean_weight", 0.0) > 0
    with grad_work():
        probed = probe(encoder, precision=settings.precision)
    h, w = pixels.shape[-2:]
    free = mm.get_free_memory(device)
    memory_tile = max_tile_side(probed, h, w, free, samples, clean, settings.margin, encoder.multiple)
    side = tile_side(settings, h, w, memory_tile or 64, device.type)
    cost = estimate_cost(probed, h, w, pixels.shape[0], settings.steps, encoder.multiple, samples, clean,
                         side, settings.margin if side else 0)
    logging.info("%s: %s; %.2f GiB free on %s", title, cost.describe(), free / 2**30, device)
    if not memory_tile or not fits_in_memory(cost, free):
        raise ValueError(refusal_message(cost, free, h, w))
    return cost.describe(), memory_tile


def run_cloak(image, encoder, make_objective, intensity, render_quality, robustness, seed, custom_budget,
              budget, title, estimate: tuple[str, int] | None = None, tile_size: int = 0,
              pass_precision: str = "auto"):
    """Shared execute body: ComfyUI types in, (cloaked IMAGE, preview IMAGE, report, engine reports) out.

    An RGBA IMAGE keeps its alpha channel untouched, and its fully transparent pixels are never changed.
    ``estimate``: what :func:`check_cost` returned, when the caller already ran it."""
    encoder = as_ensemble(encoder)
    pixels = image_to_engine(image)
    alpha = image_alpha(image)
    settings = cloak_settings(intensity, render_quality, robustness, custom_budget, budget, tile_size,
                              pass_precision)
    line, memory_tile = estimate or check_cost(pixels, encoder, settings, title.split(" ")[0])
    on_progress, should_stop = progress_callbacks(pixels.shape[0] * settings.steps)
    with grad_work():
        result = cloak_images(pixels, encoder, make_objective, settings, seed=seed,
                              on_progress=on_progress, should_stop=should_stop,
                              keep=None if alpha is None else alpha > 0, memory_tile=memory_tile)
    notes = [line] + (["alpha kept; fully transparent pixels left unchanged"] if alpha is not None else [])
    report = format_report(result.reports, f"{title} | intensity {intensity}, render quality {render_quality}, "
                                           f"robustness {robustness}, budget {budget}, encoder {encoder.name}",
                           notes)
    return (image_to_comfy(result.images, alpha), perturbation_preview(pixels, result.images), report,
            result.reports)


def cloak_settings(intensity, render_quality, robustness, custom_budget, budget, tile_size=0,
                   pass_precision="auto"):
    """The engine's settings from the node inputs (custom_budget in 1/255 steps; tile_size 0 = automatic)."""
    if pass_precision not in PRECISIONS:
        raise ValueError(f"pass_precision: unknown {pass_precision!r}; choose one of {list(PRECISIONS)}")
    if tile_size and tile_size < 64:
        raise ValueError(f"tile_size: {tile_size} px is too small to tile with; use 0 (automatic) or at least 64")
    return dataclasses.replace(settings_for(intensity, render_quality, robustness, custom_budget / 255, budget),
                               tile=int(tile_size), precision=pass_precision)


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
                *scale_inputs(),
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
                custom_budget, budget, tile_size=0, pass_precision="auto") -> io.NodeOutput:
        ensemble = as_ensemble(encoder)

        def make_objective(i, padded):
            return objective_for_target(ensemble, style_target, i, latent_sizes(ensemble, padded))

        cloaked, preview, report, _ = run_cloak(image, ensemble, make_objective, intensity, render_quality,
                                                robustness, seed, custom_budget, budget, "GlazePerturb",
                                                tile_size=tile_size, pass_precision=pass_precision)
        return io.NodeOutput(cloaked, preview, report)
