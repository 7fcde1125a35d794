"""Mimicry in miniature, for a CPU: train a small latent diffusion model (engine/miniature.py) on an artist's images
through a TAE, sample from it, and compare a model trained on the clean images with one trained on the cloaked
ones (StyleMimicryScore scores the samples). It shows local style and texture at a small scale, in minutes; a full
SD LoRA on a GPU is the lora_mimicry_test workflow."""
from __future__ import annotations

import time
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..engine import as_ensemble
from ..engine import miniature as M
from .comfy_adapters import grad_work, image_to_comfy, image_to_engine
from .schema import CloakEncoder

MiniatureMimic = io.Custom("MINIATURE_MIMIC")
ENCODE_CHUNK = 16


@dataclass(frozen=True)
class Mimic:
    """What flows along a MINIATURE_MIMIC wire: the trained model, the TAE whose latents it learned (and whose
    decoder draws its samples) and the crop side it learned from."""

    model: M.MiniUNet
    member: object
    crop: int


def decoding_member(encoder):
    """The first encoder of ``encoder`` that carries its decoder (a TAE with its decoder file, or a VAE), or a clear
    error."""
    members = [m for m in as_ensemble(encoder).members if m.decode is not None]
    if not members:
        raise ValueError("the miniature mimic needs an encoder with its decoder: in LoadVAEEncoder wire a VAE, or "
                         "pick in tae_name a TAE encoder whose *_decoder file lies beside it (e.g. "
                         "taef2_encoder.pth, or the demo's taesd_encoder.safetensors)")
    return members[0]


class TrainMiniatureMimic(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TrainMiniatureMimic",
            display_name="Train Miniature Mimic (Cloak)",
            category="cloak/mimicry",
            description="Trains a small latent diffusion model from scratch on crops of your images, through the "
                        "encoder's latents: a mimic in miniature. Train one on your clean images and one on the "
                        "cloaked copies (same seed), then compare their samples. Minutes on a CPU.",
            # a list (Load Artwork Folder: one item per file, sizes may differ) is one training set, not one mimic per
            # image: the node takes its inputs as lists
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The set the mimic learns from: a batch, or a list such as Load "
                                                 "Artwork Folder's (one mimic of the whole list; sizes may differ), "
                                                 "each image at least crop_size on both sides."),
                CloakEncoder.Input("encoder", tooltip="From LoadVAEEncoder with a TAE file and its decoder (TAEF2 "
                                                      "for a real answer; the demo TAESD is a toy)."),
                io.Int.Input("steps", default=1500, min=1, max=50000,
                             tooltip="Training steps (batch 32). ~1500 for a model that reproduces its set's style "
                                     "(the fit check of docs/evidence.md, line art and painting); 3000 for varied "
                                     "sets such as photos or flat colour; fewer only to try the graph."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seeds the weights, data order and noise: use the same seed for the clean and "
                                     "cloaked mimics, so the only difference is the data."),
                io.Int.Input("crop_size", default=M.MIMIC_CROP, min=32, max=512, step=16,
                             tooltip="Side of the square crops cut from your images (a grid at half this stride); "
                                     "the mimic learns style at this scale. A multiple of 16. 64 is what the "
                                     "fit check of docs/evidence.md passed with; larger crops train slower and "
                                     "fit worse."),
            ],
            outputs=[
                MiniatureMimic.Output(display_name="mimic", tooltip="The trained miniature model: wire it into "
                                                                     "Sample Miniature Mimic."),
                io.String.Output(display_name="report", tooltip="Crops, latent size, steps, final loss, seconds."),
            ],
        )

    @classmethod
    def execute(cls, images, encoder, steps, seed, crop_size) -> io.NodeOutput:
        encoder, steps, seed, crop_size = encoder[0], steps[0], seed[0], crop_size[0]  # is_input_list: one each
        member = decoding_member(encoder)
        unit = member.multiple * 2
        if crop_size % unit:
            raise ValueError(f"crop_size {crop_size} must be a multiple of {unit} for this encoder (its downscale "
                             f"{member.multiple} x the mimic's 2 levels)")
        if not images:
            raise ValueError("images: the list is empty; connect the set the mimic should learn from")
        batches = [image_to_engine(b, "images" if len(images) == 1 else f"images (list item {i + 1})")
                   for i, b in enumerate(images)]
        x = torch.cat([M.crops(p, crop_size, crop_size // 2) for p in batches])
        count = sum(p.shape[0] for p in batches)
        if member.prepare is not None:
            member.prepare()
        bar = comfy.utils.ProgressBar(steps)
        z = M.in_chunks(member, x.to(member.device), ENCODE_CHUNK)
        config = M.MiniConfig(channels=z.shape[1], **M.MIMIC_CONFIG)
        settings = M.TrainSettings(steps=steps, seed=seed, bf16=M.bf16_is_fast(z.device), **M.MIMIC_SETTINGS)
        last = {}

        def on_step(done, total, loss):
            mm.throw_exception_if_processing_interrupted()
            if done <= steps:  # the mimic's own loss (the weak twin's steps follow)
                last["loss"] = loss
            bar.update_absolute(done, total)

        start = time.perf_counter()
        with grad_work():
            model = M.train(z, None, config, settings, on_step=on_step)
        seconds = time.perf_counter() - start
        summary = (f"TrainMiniatureMimic | {x.shape[0]} crops of {crop_size}² from {count} image(s), latents "
                   f"{list(z.shape[1:])} ({member.name}), {steps} steps (and as many for the width-"
                   f"{settings.weak_width} weak model that sampling guides away from), seed {seed}, final loss "
                   f"{last.get('loss', float('nan')):.4f}, {seconds:.0f} s")
        return io.NodeOutput(Mimic(model, member, crop_size), summary)


class SampleMiniatureMimic(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SampleMiniatureMimic",
            display_name="Sample Miniature Mimic (Cloak)",
            category="cloak/mimicry",
            description="Draws new images from a miniature mimic (ancestral DDIM from seeded noise with autoguidance, "
                        "decoded by the encoder's decoder): what a model trained on that set learned to paint.",
            inputs=[
                MiniatureMimic.Input("mimic", tooltip="From Train Miniature Mimic."),
                io.Int.Input("count", default=16, min=1, max=256, tooltip="How many samples to draw."),
                io.Int.Input("seed", default=1000, min=0, max=2**31 - 1,
                             tooltip="Seeds the starting noise: the same seed for both mimics compares like with "
                                     "like."),
                io.Int.Input("sampler_steps", default=40, min=2, max=500, tooltip="DDIM steps per sample."),
                io.Float.Input("guidance", default=M.MIMIC_GUIDANCE, min=0.0, max=5.0, step=0.05, optional=True,
                               tooltip="Autoguidance: how far each step is pushed away from the mimic's weaker twin "
                                       "(trained alongside it). 1.0 made the miniature reproduce its training set's "
                                       "style (the fit check of docs/evidence.md); flat colour fitted best at 1.5 "
                                       "with 100 sampler_steps; 0 samples the mimic alone."),
            ],
            outputs=[io.Image.Output(display_name="samples", tooltip="count samples, crop_size² each.")],
        )

    @classmethod
    def execute(cls, mimic, count, seed, sampler_steps, guidance=M.MIMIC_GUIDANCE) -> io.NodeOutput:
        side = mimic.crop // mimic.member.multiple
        bar = comfy.utils.ProgressBar(sampler_steps)

        def on_step(done, total):
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        sampler = M.Sampler(sampler_steps, eta=1.0, guidance=guidance, bf16=M.bf16_is_fast(mimic.model.mean.device))
        z = M.sample(mimic.model, count, (side, side), sampler, seed=seed, on_step=on_step)
        out = M.in_chunks(mimic.member.decode, z.to(mimic.member.device), ENCODE_CHUNK)
        return io.NodeOutput(image_to_comfy(out.clamp(0, 1).cpu()))
