"""Full-size VAEs through the pack: ComfyUI's own VAE classes in the SD1.5, SDXL, SD3, FLUX.1 and FLUX.2
configurations (scripts/full_vaes.py), seeded random weights. Mechanics only: these runs prove that the decoded
objective, the style term and the perfect-mimic readout reach the VAEs users load, never that a cloak protects."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import full_vaes
from comfy_server import texts
from test_e2e_bad_input import node

SIDE = {"flux2": 64}  # the smallest side each architecture takes (FLUX.2 latents are 1/16 scale); others 32


def tiny_art(side: int, seed: int) -> torch.Tensor:
    """A smooth random picture with edges, IMAGE layout [1, side, side, 3]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
    x = (x + 0.1 * (torch.rand(1, 3, side, side, generator=g) > 0.9)).clamp(0, 1)
    return x.movedim(1, -1).contiguous()


@pytest.fixture(scope="module", params=list(full_vaes.ARCHS))
def full(request, comfy_host):
    """(arch, the ComfyUI VAE, the pack's encoder from LoadVAEEncoder, call counter of its decoder)."""
    arch = request.param
    vae = full_vaes.build_vae(arch)
    with torch.inference_mode():
        encoder = comfy_host.nodes.NODE_CLASS_MAPPINGS["LoadVAEEncoder"].execute(
            vae_name="none", precision="auto", weight=1.0, vae=vae).args[0]
    member = encoder.members[0]
    calls = {"decode": 0}
    inner = member.decode

    def counting(z):
        calls["decode"] += 1
        return inner(z)

    encoder.members[0] = dataclasses.replace(member, decode=counting)
    return arch, vae, encoder, calls


def test_load_vae_encoder_keeps_the_decoder_and_the_style_layers(full, comfy_host):
    arch, vae, encoder, _ = full
    member = encoder.members[0]
    assert member.decode is not None and member.multiple == full_vaes.DETECTED[arch][1]
    stack = comfy_host.pack.engine.objectives.style_stack(member.module)
    assert stack is not None and len(stack.taps) == 3  # full-, half- and quarter-resolution levels
    side = SIDE.get(arch, 32)
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        z = member(x)
        pixels = member.decode(z)
    assert z.shape[1] == full_vaes.DETECTED[arch][0] and pixels.shape == x.shape
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1


def test_glaze_through_a_full_vae_runs_the_decoded_objective(full, comfy_host):
    arch, _, encoder, calls = full
    m = comfy_host.nodes.NODE_CLASS_MAPPINGS
    side = SIDE.get(arch, 32)
    image, style = tiny_art(side, 0), tiny_art(side, 1).flip(-1)
    with torch.inference_mode():
        target = m["StyleTargetLatents"].execute(encoder, style, "per_image").args[0]
        before = calls["decode"]
        cloaked, _, report = m["GlazePerturb"].execute(image, encoder, target, "default", "faster", "off", 0, 8,
                                                       "adaptive").args
    assert calls["decode"] > before + 5, calls  # the decoder ran inside the optimisation, not only in the report
    assert cloaked.shape == image.shape and float((cloaked - image).abs().max()) > 0
    assert "decoded latent 0.50 + decoded style 0.25 + latent 0.25" in report, report
    assert "perfect mimic" in report and "of the way from the original's picture" in report, report


def test_nightshade_through_a_full_vae_reports_what_a_model_would_learn(full, comfy_host):
    arch, _, encoder, _ = full
    node = comfy_host.nodes.NODE_CLASS_MAPPINGS["NightshadePoison"]
    side = SIDE.get(arch, 32)
    with torch.inference_mode():
        poisoned, captions, _, report = node.execute(tiny_art(side, 2), encoder, tiny_art(side, 3),
                                                     caption="a cow", intensity="default", render_quality="faster",
                                                     robustness="off", seed=0, custom_budget=8, budget="adaptive",
                                                     objective="latent").args
    assert poisoned.shape == (1, side, side, 3) and captions == ["a cow"]
    assert "perfect mimic" in report and "objective: latent distance" in report, report


def test_a_full_vae_file_through_the_server_gets_the_decoded_objective(server):
    """VAE Loader → LoadVAEEncoder → StyleTargetLatents → GlazePerturb, and NightshadePoison, on the real server with
    an SD1.5-shaped VAE file in models/vae."""
    name = full_vaes.file_name("sd15")
    full_vaes.ensure_file("sd15")
    image = tiny_art(48, 4)
    from PIL import Image
    import numpy as np
    import os
    for i, pic in enumerate((image, tiny_art(48, 5))):
        Image.fromarray((pic[0].numpy() * 255).round().astype(np.uint8)).save(os.path.join(server.input_dir,
                                                                                          f"full_vae_{i}.png"))
    prompt = {
        "1": node(server, "VAELoader", vae_name=name),
        "2": node(server, "LoadImage", image="full_vae_0.png"),
        "3": node(server, "LoadImage", image="full_vae_1.png"),
        "4": node(server, "LoadVAEEncoder", vae=["1", 0], vae_name="none", precision="auto", weight=1.0),
        "5": node(server, "StyleTargetLatents", encoder=["4", 0], style=["3", 0], mode="per_image"),
        "6": node(server, "GlazePerturb", image=["2", 0], encoder=["4", 0], style_target=["5", 0],
                  render_quality="faster", robustness="off"),
        "7": node(server, "PreviewAny", source=["6", 2]),
        "8": node(server, "NightshadePoison", image=["2", 0], encoder=["4", 0], anchor=["3", 0],
                  caption="a cow", render_quality="faster", robustness="off"),
        "9": node(server, "PreviewAny", source=["8", 3]),
    }
    entry = server.run(prompt)
    out = texts(entry)
    glaze, poison = "\n".join(out.get("7", [])), "\n".join(out.get("9", []))
    assert "decoded latent 0.50 + decoded style 0.25" in glaze and "perfect mimic" in glaze, out
    assert "NightshadePoison" in poison and "perfect mimic" in poison, out
