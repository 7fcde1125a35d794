"""Node tests inside a real ComfyUI process: the Glaze path on the repository's trained TAESD."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

GLAZE_IDS = ("LoadVAEEncoder", "StyleTargetLatents", "GlazePerturb")


def small(image, w=96, h=64):
    return F.interpolate(image.movedim(-1, 1), size=(h, w), mode="bilinear", antialias=True).movedim(1, -1)


@pytest.fixture(scope="module")
def glaze(comfy_host):
    m = comfy_host.nodes.NODE_CLASS_MAPPINGS
    return m["LoadVAEEncoder"], m["StyleTargetLatents"], m["GlazePerturb"]


@pytest.fixture(scope="module")
def encoder(glaze, taesd_vae):
    with torch.inference_mode():
        return glaze[0].execute("none", "auto", 1.0, vae=taesd_vae).args[0]


def run_glaze(glaze, encoder, image, target, **kw):
    args = dict(intensity="default", render_quality="faster", robustness="on", seed=0, custom_budget=8,
                budget="adaptive")
    args.update(kw)
    with torch.inference_mode():  # as ComfyUI executes nodes
        return glaze[2].execute(image, encoder, target, **args).args


def test_pack_registers_its_nodes_with_valid_schemas(comfy_host):
    for node_id in GLAZE_IDS:
        assert node_id in comfy_host.node_ids
        cls = comfy_host.nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        schema.validate()
        assert schema.node_id == node_id and schema.category == "cloak" and schema.description
        info = cls.GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_glaze_moves_taesd_latents_toward_target(glaze, encoder, taesd_vae, sample_image, style_image):
    image, style = small(sample_image), small(style_image)
    with torch.inference_mode():
        target = glaze[1].execute(encoder, style, "per_image").args[0]
    cloaked, preview, report = run_glaze(glaze, encoder, image, target)
    assert cloaked.shape == image.shape and preview.shape == image.shape
    with torch.inference_mode():  # measured with ComfyUI's own VAE Encode path
        t, z0, z1 = (taesd_vae.encode(x) for x in (style, image, cloaked))
    d0, d1 = (z0 - t).norm(), (z1 - t).norm()
    assert d1 < 0.85 * d0, (float(d0), float(d1))
    assert "PSNR" in report and "target gain" in report
    psnr = 10 * torch.log10(1 / (cloaked - image).pow(2).mean())
    assert psnr > 33


def test_latent_style_input_and_style_stats_mode(glaze, encoder, taesd_vae, sample_image, style_image):
    image = small(sample_image)
    with torch.inference_mode():
        latent = {"samples": taesd_vae.encode(small(style_image))}
        for mode in ("per_image", "mean", "style_stats"):
            target = glaze[1].execute(encoder, latent, mode).args[0]
            assert target.mode == mode
    cloaked, _, report = run_glaze(glaze, encoder, image, target, robustness="off")
    gain = float(report.split("target gain ")[1].split(",")[0])
    assert gain > 0.1, report


def test_any_size_and_batches(glaze, encoder, sample_image, style_image):
    image = torch.cat([small(sample_image, 77, 45), small(sample_image, 77, 45).flip(2)])
    with torch.inference_mode():
        target = glaze[1].execute(encoder, small(style_image, 50, 40), "per_image").args[0]
    cloaked, _, report = run_glaze(glaze, encoder, image, target, robustness="off")
    assert cloaked.shape == image.shape
    assert report.count("image ") == 2
    assert not torch.equal(cloaked[0], cloaked[1].flip(1))  # each image its own cloak


def test_ensemble_chains_encoders(glaze, encoder, taesd_vae):
    with torch.inference_mode():
        both = glaze[0].execute("none", "fp32", 2.0, vae=taesd_vae, encoder=encoder).args[0]
    assert len(both) == 2 and both.weights == pytest.approx([1 / 3, 2 / 3])


def test_encoder_from_vae_file(glaze, comfy_host, tmp_path):
    import folder_paths
    import safetensors.torch
    src = os.path.join(os.path.dirname(folder_paths.get_full_path_or_raise("vae_approx", "taesd_encoder.safetensors")))
    sd = {}
    for half in ("encoder", "decoder"):
        for k, v in safetensors.torch.load_file(os.path.join(src, f"taesd_{half}.safetensors")).items():
            sd[f"taesd_{half}.{k}"] = v
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(0.18215), torch.tensor(0.0)
    safetensors.torch.save_file(sd, str(tmp_path / "tiny_taesd.safetensors"))
    folder_paths.add_model_folder_path("vae", str(tmp_path))
    with torch.inference_mode():
        enc = glaze[0].execute("tiny_taesd.safetensors", "auto", 1.0).args[0]
    assert enc.members[0].name.startswith("TAESD-")


@pytest.mark.parametrize("case,match", [
    ("empty", "empty"),
    ("tiny", "smaller than this encoder"),
    ("mask", "mask or latent"),
])
def test_bad_input_is_refused_clearly(glaze, encoder, sample_image, style_image, case, match):
    with torch.inference_mode():
        target = glaze[1].execute(encoder, small(style_image), "per_image").args[0]
    image = {"empty": sample_image[:0], "tiny": small(sample_image, 20, 16),
             "mask": torch.rand(1, 64, 96)}[case]
    with pytest.raises((ValueError, TypeError), match=match):
        run_glaze(glaze, encoder, image, target)


def test_target_made_with_another_encoder_is_refused(glaze, encoder, taesd_vae, comfy_host, sample_image):
    import comfy.sd
    sd = {f"taesd_encoder.{k}": v.clone() for k, v in taesd_vae.first_stage_model.taesd_encoder.state_dict().items()}
    sd.update({f"taesd_decoder.{k}": v.clone() for k, v in taesd_vae.first_stage_model.taesd_decoder.state_dict().items()})
    sd["taesd_encoder.0.weight"] = sd["taesd_encoder.0.weight"] * 1.01
    other_vae = comfy.sd.VAE(sd=sd)
    with torch.inference_mode():
        other = glaze[0].execute("none", "auto", 1.0, vae=other_vae).args[0]
        target = glaze[1].execute(other, small(sample_image), "per_image").args[0]
    with pytest.raises(ValueError, match="same encoder"):
        run_glaze(glaze, encoder, small(sample_image), target)


def test_load_vae_encoder_without_a_vae_says_what_to_connect(glaze):
    with pytest.raises(ValueError, match="needs an encoder: connect a VAE"):
        glaze[0].execute("none", "auto", 1.0)


def test_progress_bar_and_cancel(glaze, encoder, sample_image, style_image):
    import comfy.model_management as mm
    import comfy.utils
    with torch.inference_mode():
        target = glaze[1].execute(encoder, small(style_image), "per_image").args[0]
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        run_glaze(glaze, encoder, small(sample_image), target, robustness="off")
        assert seen[-1] == (15, 15) and len(seen) >= 15  # render quality faster: 15 steps, one tick a step
        mm.interrupt_current_processing(True)
        with pytest.raises(mm.InterruptProcessingException):
            run_glaze(glaze, encoder, small(sample_image), target)
    finally:
        mm.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)


def test_tile_size_and_pass_precision_inputs(comfy_host, glaze, encoder, taesd_vae, sample_image, style_image):
    """The big-image inputs (last, automatic by default): a forced tile size cloaks in tiles and says so; bf16
    passes cloak as well; old calls without them keep working (the tests above); bad values are refused."""
    image, style = small(sample_image, 192, 128), small(style_image, 192, 128)
    with torch.inference_mode():
        target = glaze[1].execute(encoder, style, "per_image").args[0]
    _, _, whole = run_glaze(glaze, encoder, image, target, robustness="off")
    cloaked, _, report = run_glaze(glaze, encoder, image, target, robustness="off", tile_size=64)
    assert "in 6 tiles" in report and "in 6 tiles" not in whole, report
    with torch.inference_mode():
        t, z0, z1 = (taesd_vae.encode(x) for x in (style, image, cloaked))
    assert (z1 - t).norm() < 0.9 * (z0 - t).norm()
    # bf16 passes only where this CPU computes bf16 natively (emulated bf16 is many times slower than fp32)
    bf16 = "bf16" if comfy_host.pack.engine.precision.cpu_has_fast_bf16() else "auto"
    _, _, report = run_glaze(glaze, encoder, image, target, robustness="off", pass_precision=bf16)
    assert "target gain" in report and "NOT protected" not in report
    # a tile_size the schema offers below the smallest useful tile runs as 64 (issue 18: no offered value refused)
    _, _, forced = run_glaze(glaze, encoder, image, target, robustness="off", tile_size=32)
    assert "in 6 tiles" in forced, forced
