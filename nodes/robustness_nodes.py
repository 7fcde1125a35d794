"""RobustnessCheck: how much of a cloak survives re-saving, resizing, blur, noise, crops, screenshots, a VAE
round trip, IMPRESS and diffusion purification. The attacks and the survival figures live in
engine/attacks.py; this module builds the callables they need from ComfyUI objects (a differentiable VAE
round trip; noise-and-denoise with ComfyUI's own sampler) and draws the chart."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.latest import io, ui

from ..engine import as_ensemble, padder
from ..engine.attacks import (BROKEN, DEFAULT_ATTACKS, HOLDS, VERDICT_RULE, AttackContext, check_survival,
                              cloak_objectives, parse_attacks)
from ..engine.cloak import check_images
from ..engine.miniature import load as load_miniature
from ..engine.purifier import find_purifier, miniature_diffuse
from .comfy_adapters import anchor_to_engine, grad_work, image_to_comfy, image_to_engine, vae_encoder
from .schema import CloakEncoder, StyleTarget


def vae_autoencoder(vae):
    """``(autoencode, multiple)``: a differentiable ``D(E(x))`` (pixels 0..1, ``[B, 3, H, W]``) from a ComfyUI VAE
    (comfy_adapters.vae_encoder with its decoder: a copy, so IMPRESS can take gradients through it without touching
    the shared VAE), loaded onto its device now."""
    member = vae_encoder(vae, keep_decoder=True)
    member.prepare()
    return tae_autoencoder(member)


def tae_autoencoder(member):
    """``(autoencode, multiple)`` from an encoder that carries its matching decoder."""
    return (lambda pixels: member.decode(member(pixels))), member.multiple


def zero_conditioning(conditioning):
    """The negative of ConditioningZeroOut: the same structure with zeroed tensors (so cfg can run)."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        if extra.get("pooled_output") is not None:
            extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
        out.append([torch.zeros_like(cond), extra])
    return out


def diffusion_purifier(model, positive, vae, steps: int, cfg: float, sampler: str, scheduler: str):
    """``diffuse(pixels, strength, seed)``: VAE-encode, noise to ``strength`` of the schedule and denoise with
    ComfyUI's KSampler machinery under ``positive``, decode (DiffPure in a latent diffusion model)."""
    negative = zero_conditioning(positive)
    multiple = getattr(vae, "downscale_ratio", 8)

    def diffuse(pixels, strength, seed):
        h, w = pixels.shape[-2:]
        latent = vae.encode(image_to_comfy(padder(h, w, multiple)(pixels)))
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                      denoise=strength, seed=seed, disable_pbar=True)
        return image_to_engine(vae.decode(samples))[..., :h, :w].to(pixels.device)

    return diffuse


PURIFIER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "miniature")

VERDICT_COLOURS = {"holds": (46, 160, 67), "weakened": (230, 150, 30), "broken": (210, 50, 50),
                   "no cloak": (128, 128, 128), "skipped": (90, 90, 90)}


def render_chart(report, width: int = 760) -> torch.Tensor:
    """The kept share per attack as horizontal bars (PIL), coloured by verdict; ComfyUI IMAGE ``[1, H, W, 3]``."""
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    row, top, left, right = 24, 48, 200, 150
    outcomes = report.outcomes
    height = top + row * len(outcomes) + 40
    img = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    span = width - left - right
    full = 1.2  # the bar area spans 0..120 % kept

    def x_of(share):
        return left + span * min(max(share, 0.0), full) / full

    draw.text((10, 10), f"{report.title}: share of the target gain kept (unattacked gain "
                        f"{report.mean_clean_gain:.3f})", fill=(235, 235, 235), font=font)
    for share in (BROKEN, HOLDS, 1.0):  # verdict thresholds and the unattacked level
        x = x_of(share)
        draw.line([(x, top - 6), (x, top + row * len(outcomes))], fill=(100, 100, 100), width=1)
        draw.text((x + 3, top - 22), f"{share:.0%}", fill=(170, 170, 170), font=font)
    for k, o in enumerate(outcomes):
        y = top + k * row
        draw.text((10, y + 3), o.label[:26], fill=(220, 220, 220), font=font)
        colour = VERDICT_COLOURS.get(o.verdict, (128, 128, 128))
        if o.status == "ok" and o.kept is not None:
            draw.rectangle([left, y + 4, max(left + 1, x_of(o.kept)), y + row - 4], fill=colour)
            note = f"{100 * o.kept:.0f}% {o.verdict}"
        else:
            note = o.verdict if o.status == "ok" else "skipped"
        draw.text((width - right + 8, y + 3), note, fill=colour if o.status == "ok" else (150, 150, 150), font=font)
    draw.text((10, height - 28), VERDICT_RULE[:110], fill=(150, 150, 150), font=font)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


class AttackProgress:
    """ComfyUI's progress bar over the attacks' work: one unit per attack plus two per IMPRESS step (the original
    and the cloaked image are purified alike), so the bar moves inside a minutes-long IMPRESS run too. The engine
    calls ``should_stop`` at every IMPRESS step (and between attacks): each call advances the bar, capped at the
    current attack's share; ``on_attack`` sets it exactly when an attack ends."""

    def __init__(self, attacks):
        steps = [(a.value if a.value is not None else a.kind.default) if a.kind.key == "impress" else 0
                 for a in attacks]
        self.weights = [1 + 2 * int(s or 0) for s in steps]
        self.total, self.done, self.attack = sum(self.weights), 0, 0
        self.bar = comfy.utils.ProgressBar(self.total)

    def should_stop(self) -> bool:
        cap = sum(self.weights[:self.attack + 1]) - 1
        if self.done < cap:
            self.done += 1
            self.bar.update_absolute(self.done, self.total)
        return mm.processing_interrupted()

    def on_attack(self, done: int, total: int, _label=None) -> None:
        self.attack, self.done = done, sum(self.weights[:done])
        self.bar.update_absolute(self.done, self.total)


class RobustnessCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustnessCheck",
            display_name="Robustness Check (Cloak)",
            category="cloak",
            description="Attacks a cloaked image the way scrapers and cloak removers do and reports, per attack, "
                        "how much of the cloak's pull toward its target survives. " + VERDICT_RULE + ".",
            is_output_node=True,
            inputs=[
                io.Image.Input("original", tooltip="The image before cloaking (what went into the cloak node)."),
                io.Image.Input("cloaked", tooltip="The cloaked image (what came out of GlazePerturb or "
                                                  "NightshadePoison), same size and batch as original."),
                CloakEncoder.Input("encoder", tooltip="The encoder the cloak was made against (LoadVAEEncoder)."),
                io.MultiType.Input("target", types=[StyleTarget, io.Image, io.Latent],
                                   tooltip="What the cloak pulls toward: the STYLE_TARGET given to GlazePerturb, "
                                           "or the anchor IMAGE / LATENT given to NightshadePoison."),
                io.String.Input("attacks", default=DEFAULT_ATTACKS.replace(", ", "\n"), multiline=True,
                                tooltip="One attack per line or comma-separated, as key or key:strength. "
                                        "jpeg:quality (4:2:0), jpeg444:quality, webp:quality, resize:scale, blur:sigma, noise:sigma, "
                                        "crop:keep, rotate:degrees, screenshot:scale, vae, impress:steps "
                                        "(need vae), diffpure:strength, noisy_upscale:strength (need vae, "
                                        "model, positive), none. Attacks whose inputs are not wired are "
                                        "listed as skipped."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random attacks (noise, diffusion); original and cloaked get "
                                     "the same draw."),
                io.Vae.Input("vae", optional=True,
                             tooltip="For the VAE round trip, IMPRESS and diffusion purification. Without it, a TAE "
                                     "encoder whose *_decoder file lies beside it purifies through that decoder."),
                io.Model.Input("model", optional=True,
                               tooltip="A diffusion model for DiffPure / noisy upscaling (with vae and positive). "
                                       "Without it, a TAE encoder with its decoder (TAEF2, the demo TAESD) "
                                       "purifies with the pack's miniature purifier (models/miniature): "
                                       "far weaker than SD's, see docs/evidence.md."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Conditioning the purifier denoises under (e.g. a caption)."),
                io.Int.Input("purify_steps", default=20, min=1, max=200, optional=True,
                             tooltip="Sampler steps of the full schedule for diffusion purification; only "
                                     "the last strength share of them run."),
                io.Float.Input("purify_cfg", default=1.0, min=0.0, max=30.0, step=0.1, optional=True,
                               tooltip="CFG of the purifier (negative = zeroed positive); 1 runs it once."),
                io.Combo.Input("purify_sampler", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               optional=True,
                               tooltip="Sampler of the purifier."),
                io.Combo.Input("purify_scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS),
                               default="normal", optional=True, tooltip="Scheduler of the purifier."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The table, then the same figures as JSON (after a "
                                                                "'JSON:' line). Verdicts: " + VERDICT_RULE + "."),
                io.Image.Output(display_name="chart", tooltip="Kept share per attack, coloured by verdict (green "
                                                              "holds, orange weakened, red broken). " + VERDICT_RULE),
                io.Image.Output(display_name="attacked", tooltip="The attacked cloaked images, attack by attack "
                                                                  "(batch order: attack, then image)."),
                io.String.Output(display_name="table", tooltip="The survival table alone, as Markdown (for Preview "
                                                               "Any)."),
                io.String.Output(display_name="json", tooltip="The same figures as JSON alone, for scripts."),
            ],
        )

    @classmethod
    def validate_inputs(cls, attacks=None):
        # only `attacks` in the signature: ComfyUI repeats a failed custom validation once per input it passed in
        if attacks is not None:
            try:
                parse_attacks(attacks)
            except (ValueError, TypeError) as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, original, cloaked, encoder, target, attacks, seed, vae=None, model=None, positive=None,
                purify_steps=20, purify_cfg=1.0, purify_sampler="euler", purify_scheduler="normal") -> io.NodeOutput:
        ensemble = as_ensemble(encoder)
        chosen = parse_attacks(attacks)
        x, x_adv = image_to_engine(original, "original"), image_to_engine(cloaked, "cloaked")
        check_images(x, ensemble, "original")
        if (model is None) != (positive is None) or (model is not None and vae is None):
            raise ValueError("diffusion purification needs model, positive and vae: wire all three or no model")
        ensemble.prepare()
        device = ensemble.members[0].device
        with grad_work():
            objective_for = cloak_objectives(ensemble, anchor_to_engine(target) if isinstance(target, (dict, torch.Tensor))
                                             else target, x)
        progress = AttackProgress(chosen)
        ctx = AttackContext(should_stop=progress.should_stop, on_attack=progress.on_attack)
        with_decoder = next((m for m in ensemble.members if m.decode is not None), None)
        if vae is None and with_decoder is not None:
            ctx.autoencode, ctx.multiple = tae_autoencoder(with_decoder)  # a real decoder beside the TAE
        if model is None and any(a.kind.needs == "model" for a in chosen):
            purifier_member = with_decoder if vae is None else vae_encoder(vae, keep_decoder=True)
            if purifier_member is not None:
                if purifier_member.prepare is not None:
                    purifier_member.prepare()
                found = find_purifier(purifier_member, PURIFIER_DIR)
                if found.path is None:
                    ctx.no_diffuse = f"needs a diffusion model: wire vae, model and positive ({found.reason})"
                else:  # the pack's generic miniature purifier over these latents (weak next to SD's: docs/evidence.md)
                    ctx.diffuse = miniature_diffuse(purifier_member, load_miniature(found.path, device), found.scale)
                    ctx.diffuse_label = "miniature purifier"
        if vae is not None:
            ctx.autoencode, ctx.multiple = vae_autoencoder(vae)
            if model is not None:
                ctx.diffuse = diffusion_purifier(model, positive, vae, purify_steps, purify_cfg, purify_sampler,
                                                 purify_scheduler)
        with grad_work():
            report = check_survival(x.to(device), x_adv.to(device), objective_for, chosen, ensemble.multiple, ctx,
                                    seed=seed, title=f"RobustnessCheck | encoder {ensemble.name}")
        text = report.text()
        chart = render_chart(report)
        attacked = [o.images for o in report.outcomes if o.images is not None] or [x_adv]
        figures = json.dumps(report.as_dict(), indent=1)
        ui_out = {**ui.PreviewImage(chart, cls=cls).as_dict(), "text": (report.table(), figures)}
        return io.NodeOutput(text, chart, image_to_comfy(torch.cat(attacked, 0)), report.table(), figures, ui=ui_out)
