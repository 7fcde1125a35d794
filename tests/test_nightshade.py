"""NightshadePoison inside a real ComfyUI process (trained TAESD; a small UNet built from ComfyUI's own model
classes), anchor pairing, and workflows/nightshade_poison.json end to end on the real server.

The workflow's anchor branch (Load Checkpoint → KSampler "a photo of a cat" → VAE Decode) needs a real
checkpoint, which cannot be downloaded here; the end-to-end test runs the workflow as saved except that it
swaps that branch for what a checkpoint would provide: a LoadImage of a real photo of concept B as the
anchor and VAELoader "taesd" (the repository's trained TAESD) as the encoder's VAE (see offline_prompt).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfy_server import texts, ui_to_api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "workflows", "nightshade_poison.json")


def photo(name: str, size: int = 64, offset: float = 0.5) -> torch.Tensor:
    """A square crop of a scikit-image photo as a ComfyUI IMAGE [1, size, size, 3] on 8-bit levels."""
    import skimage.data
    img = getattr(skimage.data, name)()[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = int((h - side) * offset), int((w - side) * offset)
    crop = torch.from_numpy(np.ascontiguousarray(img[top:top + side, left:left + side])).float() / 255
    crop = F.interpolate(crop.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", antialias=True)
    return (torch.round(crop.clamp(0, 1) * 255) / 255).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def ns(comfy_host):
    m = comfy_host.nodes.NODE_CLASS_MAPPINGS
    return m["NightshadePoison"], comfy_host.pack.nodes.nightshade_nodes, comfy_host.pack.engine


@pytest.fixture(scope="module")
def encoder(comfy_host, taesd_vae):
    with torch.inference_mode():
        return comfy_host.nodes.NODE_CLASS_MAPPINGS["LoadVAEEncoder"].execute("none", "auto", 1.0, vae=taesd_vae).args[0]


def poison(node, image, encoder, anchor, **kw):
    args = dict(caption="a photo of a cow", intensity="high", render_quality="faster", robustness="off", seed=0,
                custom_budget=8, budget="adaptive", objective="latent")
    args.update(kw)
    with torch.inference_mode():  # as ComfyUI executes nodes
        return node.execute(image, encoder, anchor, **args).args


# ------------------------------------------------------------------------------------------- latent objective
def test_schema_has_tooltips_and_the_public_contract(ns, comfy_host):
    for node_id in ("NightshadePoison", "SavePoisonDataset"):
        assert node_id in comfy_host.node_ids
        cls = comfy_host.nodes.NODE_CLASS_MAPPINGS[node_id]
        cls.GET_SCHEMA().validate()
        info = cls.GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    info = ns[0].GET_NODE_INFO_V1()
    assert info["input_order"]["required"] == ["image", "encoder", "anchor", "caption", "intensity", "render_quality",
                                               "robustness", "seed", "custom_budget", "budget", "objective"]
    assert info["input_order"]["optional"] == ["model", "positive", "tile_size", "pass_precision"]
    assert info["output_name"] == ["poisoned", "caption", "perturbation", "report"]
    assert info["output_is_list"] == [False, True, False, False]


def test_latent_objective_moves_taesd_latents_toward_the_anchor(ns, encoder, taesd_vae):
    image = torch.cat([photo("astronaut", 48), photo("coffee", 48)])
    anchor = photo("chelsea", 48)
    poisoned, captions, preview, report = poison(ns[0], image, encoder, anchor, caption="a photo of a cow")
    assert poisoned.shape == image.shape and preview.shape == image.shape
    assert captions == ["a photo of a cow"] * 2
    # the same amount of change, spent at random: what the budget alone does to the latent
    change = poisoned - image
    noise = torch.randn(change.shape, generator=torch.Generator().manual_seed(0))
    noise = noise * (change.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    randomised = (image + noise).clamp(0, 1)
    with torch.inference_mode():  # measured with ComfyUI's own VAE Encode
        za, z0, z1, zr = (taesd_vae.encode(x) for x in (anchor, image, poisoned, randomised))
    for i in range(2):
        before, after, after_random = ((z - za[0]).norm() for z in (z0[i], z1[i], zr[i]))
        assert after < 0.9 * before, (i, float(before), float(after))  # toward the anchor
        assert before - after > 5 * (before - after_random).abs(), (i, float(before), float(after), float(after_random))
        assert (z1[i] - z0[i]).norm() > 3 * (zr[i] - z0[i]).norm()  # away from the original, far more than noise
    psnr = 10 * torch.log10(1 / change.pow(2).flatten(1).mean(1))
    assert (psnr > 30).all(), psnr
    assert "image 0: anchor 0" in report and "image 1: anchor 0" in report and "PSNR" in report


def test_pairing_picks_the_nearest_anchor(ns, encoder, taesd_vae):
    engine = ns[2]
    images = torch.cat([photo("astronaut"), photo("coffee")])
    anchors = torch.cat([photo("coffee").flip(2), photo("chelsea"), photo("astronaut", offset=0.4)])
    with torch.inference_mode(False):
        pixels = images.movedim(-1, 1).clone()
        plan = engine.nightshade.plan_poison(engine.as_ensemble(encoder), pixels, anchors.movedim(-1, 1).clone())
    # the nearest by latent is the slightly shifted crop of the same photo for image 0, the mirror for image 1
    assert plan.pairing.tolist() == [2, 0], plan.pair_distances
    assert plan.pair_distances.argmin(1).tolist() == [2, 0]
    with torch.inference_mode():  # a LATENT anchor batch (from KSampler, say) is paired the same way
        latents = taesd_vae.encode(anchors)
    with torch.inference_mode(False):
        plan = engine.nightshade.plan_poison(engine.as_ensemble(encoder), pixels, latents.clone())
    assert plan.pairing.tolist() == [2, 0], plan.pair_distances
    # one anchor per image (anchors redrawn from each image): image i gets anchor i, whatever is nearest
    with torch.inference_mode(False):
        own = engine.nightshade.plan_poison(engine.as_ensemble(encoder), pixels,
                                            anchors[1:].movedim(-1, 1).clone(), "one per image")
        assert own.pairing.tolist() == [0, 1] and own.pair_distances.argmin(1).tolist() == [1, 0]
        with pytest.raises(ValueError, match="one anchor per image"):
            engine.nightshade.plan_poison(engine.as_ensemble(encoder), pixels, anchors.movedim(-1, 1).clone(),
                                          "one per image")


def test_captions_and_clear_errors(ns, encoder):
    node, module = ns[0], ns[1]
    assert module.captions_for("a cow\n\n", 3) == ["a cow"] * 3
    assert module.captions_for("cow 1\ncow 2", 2) == ["cow 1", "cow 2"]
    with pytest.raises(ValueError, match="2 lines for 3 images"):
        module.captions_for("a\nb", 3)
    with pytest.raises(ValueError, match="caption is empty"):
        poison(node, photo("coffee"), encoder, photo("chelsea"), caption="  ")
    with pytest.raises(ValueError, match="connect 'model'.*'positive'"):
        poison(node, photo("coffee"), encoder, photo("chelsea"), objective="noise")
    with pytest.raises(ValueError, match="anchor"):
        poison(node, photo("coffee"), encoder, {"samples": torch.zeros(0, 4, 8, 8)})


# -------------------------------------------------------------------------------------------- noise objective
def tiny_sd15_patcher(seed: int = 0):
    """An SD1.5-type model (comfy.model_base.BaseModel, EPS) with a tiny UNet: 32 channels, one res block
    per level, context 32. ComfyUI's layers are not initialised, so every weight is set here."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    unet = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
            "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 32,
            "transformer_depth_output": [1, 1, 1, 1], "use_temporal_resblock": False,
            "use_temporal_attention": False, "dtype": torch.float32}
    config = comfy.supported_models.SD15(unet)
    config.unet_config["num_heads"] = 2
    model = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("weight"):  # norm scales
                p.fill_(1.0)
            else:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def diffusion(comfy_host):
    with torch.inference_mode():  # as Load Checkpoint / CLIP Text Encode make them inside ComfyUI
        patcher = tiny_sd15_patcher()
        positive = [[torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1)), {}]]
    return patcher, positive


def sample_once(patcher, positive):
    """A plain ComfyUI sampling run (CFGGuider + euler), to check the model is left as it was."""
    import comfy.samplers
    guider = comfy.samplers.CFGGuider(patcher)
    guider.inner_set_conds({"positive": positive})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", 3)
    with torch.inference_mode():
        return guider.sample(noise, torch.zeros(1, 4, 8, 8), comfy.samplers.ksampler("euler"), sigmas, seed=0)


def test_predictor_returns_the_unets_own_noise_prediction(ns, diffusion):
    module = ns[1]
    patcher, positive = diffusion
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))

    def work(predictor):
        with torch.inference_mode(False), torch.enable_grad():
            sig = predictor.sigmas_from_uniform(torch.tensor([0.3, 0.7]))
            zz = z.clone().requires_grad_(True)
            eps = predictor.predict(zz, sig, noise)
            (grad,) = torch.autograd.grad(eps.pow(2).sum(), zz)
        return sig, eps.detach(), grad

    before = sample_once(patcher, positive)
    with torch.inference_mode():
        sig, eps, grad = module.with_diffusion_model(patcher, positive, (8, 8), work)
    assert sig[0] > sig[1] > 0  # 0 = most noise: the model's own schedule
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    m = patcher.model  # the EPS UNet's raw output, by hand: input scaled by 1/sqrt(σ²+1), timestep of σ
    ms = m.model_sampling
    x = (z * m.latent_format.scale_factor + noise * sig.view(-1, 1, 1, 1))
    with torch.no_grad():
        raw = m.diffusion_model(ms.calculate_input(sig, x), ms.timestep(sig).float(),
                                context=positive[0][0].expand(2, -1, -1))
    assert torch.allclose(eps, raw, atol=1e-4), (eps - raw).abs().max()
    assert torch.equal(sample_once(patcher, positive), before)  # ComfyUI's model is left as loaded


def test_noise_objective_lowers_the_predicted_noise_distance(ns, encoder, diffusion, taesd_vae):
    node, module, engine = ns
    patcher, positive = diffusion
    image, anchor = photo("coffee", 32), photo("chelsea", 32)
    with torch.inference_mode():  # the anchor as a LATENT, as KSampler would give it
        latent = {"samples": taesd_vae.encode(anchor)}
    poisoned, captions, _, report = poison(node, image, encoder, latent, objective="noise", model=patcher,
                                           positive=positive)
    assert captions == ["a photo of a cow"] and "noise objective" in report
    ensemble = engine.as_ensemble(encoder)

    def measure(predictor):  # fresh draws (another seed than the optimisation's), 8 timesteps
        with torch.inference_mode(False):
            a = engine.nightshade.encode(ensemble, anchor.movedim(-1, 1).clone())
            obj = engine.nightshade.NoiseMatch(ensemble, predictor, a, seed=1234, eval_draws=8)
            return [float(obj.distances(x.movedim(-1, 1).clone()).detach()[0, 0]) for x in (image, poisoned)]

    with torch.inference_mode():
        before, after = module.with_diffusion_model(patcher, positive, (4, 4), measure)
    assert after < 0.9 * before, (before, after)
    gain = float(report.split("target gain ")[1].split(",")[0])
    assert gain > 0.1, report


# ------------------------------------------------------------------------------------------------ end to end
def offline_prompt(server, anchor_file: str) -> dict:
    """The saved workflow as an API prompt, with its checkpoint branch swapped for offline stand-ins."""
    with open(WORKFLOW) as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    poison_id = by_type["NightshadePoison"][0]
    encoder_id = by_type["LoadVAEEncoder"][0]
    for kind in ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode"):
        for node_id in by_type.get(kind, []):
            del prompt[node_id]
    prompt["anchor"] = {"class_type": "LoadImage", "inputs": {"image": anchor_file}}
    prompt["taesd"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
    prompt[poison_id]["inputs"]["anchor"] = ["anchor", 0]
    prompt[encoder_id]["inputs"]["vae"] = ["taesd", 0]
    for node in prompt.values():  # drop links into removed nodes (e.g. a preview of the anchor)
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del node["inputs"][name]
    prompt = {k: v for k, v in prompt.items() if v["class_type"] != "PreviewImage" or v["inputs"].get("images")}
    return prompt


def test_workflow_runs_end_to_end_and_writes_the_poison_set(server):
    with open(WORKFLOW) as f:
        workflow = json.load(f)
    types = {n["type"] for n in workflow["nodes"]}
    assert {"EmptyLatentImage", "KSampler", "VAEDecode", "NightshadePoison", "SavePoisonDataset"} <= types
    small = Image.open(os.path.join(ROOT, "samples", "coffee.png")).convert("RGB").resize((192, 128), Image.LANCZOS)
    small.save(os.path.join(server.input_dir, "coffee_small.png"))  # half size: keeps the CPU run short
    cat = (photo("chelsea", size=128)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(cat).save(os.path.join(server.input_dir, "anchor_cat.png"))
    prompt = offline_prompt(server, "anchor_cat.png")
    for node in prompt.values():
        if node["class_type"] == "LoadImage" and node["inputs"]["image"] != "anchor_cat.png":
            node["inputs"]["image"] = "coffee_small.png"
        if node["class_type"] == "NightshadePoison":
            node["inputs"].update(render_quality="faster", robustness="off")
            caption = node["inputs"]["caption"]
    entry = server.run(prompt, timeout=900)
    shown = "\n".join(sum(texts(entry).values(), []))
    assert "image 0: anchor 0" in shown and "pairs in" in shown, shown
    written = [os.path.join(dp, f) for dp, _, fs in os.walk(server.output_dir) for f in fs if f.endswith(".png")
               and f.startswith("poison_")]
    assert len(written) == 1, written
    with open(written[0][:-4] + ".txt", encoding="utf-8") as f:
        assert f.read().strip() == caption
    original = np.asarray(small, dtype=np.float64)
    saved = np.asarray(Image.open(written[0]).convert("RGB"), dtype=np.float64)
    assert saved.shape == original.shape and 0 < np.abs(saved - original).max() <= 20  # default: 20/255
    assert 10 * np.log10(255 ** 2 / ((saved - original) ** 2).mean()) >= 34.99  # default's 35 dB floor
