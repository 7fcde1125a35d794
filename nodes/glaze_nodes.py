"""GlazePerturb: Glaze-style cloaking against style mimicry (Shan et al., USENIX Security 2023)."""
from __future__ import annotations

from comfy_api.latest import io

from ..engine import CloakOptions, as_ensemble, glaze_objectives
from .comfy_adapters import (alpha_notes, grad_work, image_alpha, image_to_comfy, image_to_engine, job_hooks,
                             perturbation_preview, planned_job)
from .schema import CloakEncoder, StyleTarget, cloak_inputs, scale_inputs


class GlazePerturb(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GlazePerturb",
            display_name="Glaze Perturb (Cloak)",
            category="cloak",
            description="Cloaks artwork against style mimicry: a small, computed change that moves what the "
                        "encoder sees toward the target style, so a LoRA trained on it learns that style "
                        "instead of yours. With an encoder that carries its decoder (e.g. TAEF2 with its "
                        "*_decoder file), it also pulls the decoded latent, the picture such a model would draw, "
                        "and that picture's texture statistics toward the target (about 3.8x the time per step).",
            inputs=[
                io.Image.Input("image", tooltip="The artwork to cloak (a batch: each image gets its own cloak)."),
                CloakEncoder.Input("encoder", tooltip="From LoadVAEEncoder: the model(s) to cloak against."),
                StyleTarget.Input("style_target", tooltip="From StyleTargetLatents, made with the same encoder."),
                *cloak_inputs(),
                *scale_inputs(),
                io.Boolean.Input("decoded_objective", default=True, optional=True,
                                 tooltip="Advanced. On (default since 2026-12-01): where the encoder carries its "
                                         "decoder (e.g. TAEF2 with its *_decoder file), the cloak also pulls the "
                                         "decoded latent, the picture a model trained on your art would draw, "
                                         "toward the target, and (since 2026-12-05) that picture's texture "
                                         "statistics in the encoder's own features: measured on TAEF2 it moved "
                                         "that picture's style 1.4x (TAESANA features) to 4x (pixel statistics) "
                                         "as far as plain PGD, at about 3.8x the time. Off: the latent distance "
                                         "alone (faster; no effect for encoders without a decoder)."),
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
                custom_budget, budget, tile_size=0, pass_precision="auto", decoded_objective=True) -> io.NodeOutput:
        options = CloakOptions(intensity, render_quality, robustness, custom_budget, budget, tile_size, pass_precision,
                               decoded=bool(decoded_objective))
        ensemble = as_ensemble(encoder)
        pixels, alpha = image_to_engine(image), image_alpha(image)
        objectives = glaze_objectives(ensemble, style_target, pixels.shape[0])
        job = planned_job(pixels, alpha, ensemble, options.settings(), "GlazePerturb")
        with grad_work():
            result = job.run(objectives, seed, job_hooks(job))
        report = job.report(result, f"GlazePerturb | {options.describe()}, encoder {ensemble.name}", alpha_notes(alpha))
        return io.NodeOutput(image_to_comfy(result.images, alpha), perturbation_preview(pixels, result.images), report)
