"""LoadVAEEncoder and StyleTargetLatents: the encoder(s) a cloak works against, and the style it aims for."""
from __future__ import annotations

import torch

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..engine import EncoderEnsemble, as_ensemble, make_style_target, padder, style_target_from_latents
from ..engine.cloak import check_images
from ..engine.objectives import TARGET_MODES, check_channels
from ..engine.precision import WEIGHT_DTYPES
from ..engine.tae import BadTAEFile
from .comfy_adapters import image_to_engine, tae_encoder_files, tae_file_encoder, vae_encoder
from .schema import CloakEncoder, StyleTarget


class LoadVAEEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadVAEEncoder",
            display_name="Load VAE Encoder (Cloak)",
            category="cloak",
            description="Wraps a VAE as a differentiable encoder for cloaking. Chain several to cloak against "
                        "an ensemble, which transfers better to models you cannot test.",
            inputs=[
                io.Vae.Input("vae", optional=True,
                             tooltip="A VAE already loaded by Load Checkpoint or VAE Loader (SD1.x, SDXL, SD3, "
                                     "FLUX.1, FLUX.2 or a TAESD). Its decoder is kept, so GlazePerturb's decoded "
                                     "objective (what a model trained on your art would draw) runs against it. "
                                     "A full VAE is the GPU choice; on a CPU pick its family's tiny autoencoder "
                                     "in tae_name (taesd: SD1.x, taesdxl: SDXL, taesd3: SD3, taef1: FLUX.1, "
                                     "taef2: FLUX.2), or chain both as an ensemble. Leave empty to load one by "
                                     "name below."),
                io.Combo.Input("vae_name", options=["none"] + folder_paths.get_filename_list("vae"),
                               default="none",
                               tooltip="Load a VAE file from models/vae instead (encoder and decoder are kept). "
                                       "Used only when no vae is connected."),
                io.Combo.Input("precision", options=list(WEIGHT_DTYPES), default="auto",
                               tooltip="Precision of the encoder. auto: the VAE's own. fp32 is slowest and "
                                       "most exact; fp16/bf16 save memory on GPUs. The cloak itself is "
                                       "always computed in fp32."),
                io.Float.Input("weight", default=1.0, min=0.01, max=100.0, step=0.05,
                               tooltip="This encoder's share of the loss when chained into an ensemble."),
                CloakEncoder.Input("encoder", optional=True,
                                   tooltip="Optional: an encoder (or ensemble) to add this one to."),
                io.Combo.Input("tae_name", options=["none"] + tae_encoder_files(), default="none", optional=True,
                               tooltip="Or a tiny autoencoder's encoder file from models/vae_approx, the CPU "
                                       "choice: taesd (SD1.x/2.x), taesdxl (SDXL), taesd3 (SD3), taef1 (FLUX.1), "
                                       "taef2 (FLUX.2), taesana (Sana); the variant is read from the weights. "
                                       "ComfyUI users who enabled TAESD previews already have them; the public "
                                       "weights are in github.com/madebyollin/taesd. Used only when no vae is "
                                       "connected and vae_name is none. Its *_decoder file beside it enables the "
                                       "decoded objective and RobustnessCheck's purification."),
            ],
            outputs=[CloakEncoder.Output(display_name="encoder",
                                      tooltip="The encoder (or the ensemble so far), for StyleTargetLatents, "
                                              "GlazePerturb, NightshadePoison and RobustnessCheck.")],
        )

    @classmethod
    def execute(cls, vae_name, precision, weight, vae=None, encoder=None, tae_name="none") -> io.NodeOutput:
        chosen = [what for what, on in (("vae", vae is not None), ("vae_name", vae_name != "none"),
                                        ("tae_name", tae_name != "none")) if on]
        if not chosen:
            raise ValueError("LoadVAEEncoder needs an encoder: connect a VAE to 'vae', or pick a file in 'vae_name' "
                             "(models/vae) or 'tae_name' (models/vae_approx)")
        if len(chosen) > 1 and "vae" not in chosen:
            raise ValueError(f"LoadVAEEncoder got both vae_name {vae_name!r} and tae_name {tae_name!r}: set one to "
                             "none (chain a second LoadVAEEncoder to cloak against both)")
        if vae is not None and "tae_name" in chosen:
            raise ValueError(f"LoadVAEEncoder got a connected vae and tae_name {tae_name!r}: set tae_name to none "
                             "(chain a second LoadVAEEncoder to cloak against both)")
        if vae is not None:
            member = vae_encoder(vae, precision)
        elif vae_name != "none":
            path = folder_paths.get_full_path_or_raise("vae", vae_name)
            member = vae_encoder(comfy.sd.VAE(sd=comfy.utils.load_torch_file(path)), precision)
        else:
            try:
                member = tae_file_encoder(folder_paths.get_full_path_or_raise("vae_approx", tae_name), precision)
            except BadTAEFile as e:  # a plain ValueError: ComfyUI names the class with its module's machine path
                raise ValueError(f"tae_name: {e}") from None
        ensemble = encoder.extend(member, weight) if encoder is not None else EncoderEnsemble([member], [weight])
        return io.NodeOutput(ensemble)


def check_style_latent(latents, encoder) -> torch.Tensor:
    """A style LATENT that fits ``encoder`` (a single-member ensemble), or a clear error before any work: not a
    4-D batch (video/audio latents), empty, NaN/inf, or from another latent space (channels learnt by encoding a
    tiny probe image)."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"style LATENT: expected tensor samples, got {type(latents).__name__}")
    if latents.ndim != 4 or 0 in latents.shape:
        raise ValueError(f"style LATENT must be an image latent batch [B, C, h, w], got {list(latents.shape)}; "
                         "video and audio latents cannot be a style target")
    if not (latents.is_floating_point() and torch.isfinite(latents).all()):
        raise ValueError(f"style LATENT ({latents.dtype}, {list(latents.shape)}) contains NaN or infinite values "
                         "(or is not float): a target like that would leave the image unprotected. Re-encode the "
                         "style images with VAE Encode, or wire the style IMAGE instead")
    member = encoder.members[0]
    encoder.prepare()
    side = max(member.min_size, member.multiple)
    with torch.no_grad():
        probe = member(torch.full((1, 3, side, side), 0.5, device=member.device))
    check_channels(latents.shape[1], probe.shape[1], member.name)
    with torch.inference_mode(False):
        return latents.float().clone()


class StyleTargetLatents(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleTargetLatents",
            display_name="Style Target Latents (Cloak)",
            category="cloak",
            description="Encodes target-style images (or takes latents) into the target a cloak pulls toward.",
            inputs=[
                CloakEncoder.Input("encoder", tooltip="The encoder from LoadVAEEncoder; use the same one "
                                                      "for GlazePerturb."),
                io.MultiType.Input("style", types=[io.Image, io.Latent],
                                   tooltip="Images in the target style (IMAGE), or their latents from VAE "
                                           "Encode with the same VAE (LATENT, single encoder only). For Glaze's "
                                           "own recipe, give your artwork style-transferred by img2img "
                                           "(denoise ≈ 0.4) and use mode per_image."),
                io.Combo.Input("mode", options=list(TARGET_MODES), default="per_image",
                               tooltip="per_image: style image i is the target of artwork i (one style image "
                                       "serves all). mean: the mean latent of the style set. style_stats: "
                                       "latent channel statistics and Gram matrices (StyleGuard), "
                                       "position-free: best for a style set unrelated to the artwork's layout."),
            ],
            outputs=[StyleTarget.Output(display_name="style_target",
                                     tooltip="The target latents (or statistics) the cloak pulls toward, "
                                             "for GlazePerturb and RobustnessCheck.")],
        )

    @classmethod
    def execute(cls, encoder, style, mode) -> io.NodeOutput:
        encoder = as_ensemble(encoder)
        if isinstance(style, dict) and "samples" in style:
            if len(encoder) != 1:
                raise ValueError("a LATENT style works with a single encoder; give style IMAGES to build a "
                                 f"target for an ensemble of {len(encoder)}")
            latents = check_style_latent(style["samples"], encoder)
            target = style_target_from_latents(encoder.name, [m.name for m in encoder.members],
                                               [[latents.float()]], mode)
            return io.NodeOutput(target)
        pixels = image_to_engine(style, "style")
        check_images(pixels, encoder, "style")
        encoder.prepare()
        pad = padder(pixels.shape[-2], pixels.shape[-1], encoder.multiple)
        device = encoder.members[0].device
        with torch.no_grad():
            target = make_style_target(encoder, pixels.to(device), mode, pad)
        return io.NodeOutput(target)
