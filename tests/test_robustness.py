"""RobustnessCheck: known answers, every attack on the trained TAESD, diffusion purification with a small UNet
built from ComfyUI's own classes, the report (table + JSON) and the chart, and the workflow on a real server.

Images are a 64x96 crop of the bundled sample (cloaked with the "faster" preset) to keep the suite quick.
"""
from __future__ import annotations

import json
import math
import os
import re
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "workflows", "robustness_report.json")
CROP = (slice(None), slice(96, 160), slice(144, 240))  # [1, 64, 96, 3]


@pytest.fixture(scope="module")
def cl(comfy_host, taesd_vae, sample_image, style_image):
    """The pack's modules, the TAESD encoder, a style target and a small Glaze cloak of the sample crop."""
    pack = comfy_host.pack
    nodes = pack.nodes
    image, style = sample_image[CROP].contiguous(), style_image[CROP].contiguous()
    encoder = nodes.encoder_nodes.LoadVAEEncoder.execute(vae_name="none", precision="auto", weight=1.0,
                                                         vae=taesd_vae).args[0]
    target = nodes.encoder_nodes.StyleTargetLatents.execute(encoder=encoder, style=style, mode="per_image").args[0]
    cloaked = nodes.glaze_nodes.GlazePerturb.execute(image=image, encoder=encoder, style_target=target,
                                                     intensity="default", render_quality="faster", robustness="on",
                                                     seed=0, custom_budget=8, budget="adaptive").args[0]
    return types.SimpleNamespace(A=pack.engine.attacks, RN=nodes.robustness_nodes, image=image, style=style,
                                 encoder=encoder, target=target, cloaked=cloaked, vae=taesd_vae, nodes=comfy_host.nodes)


def check(cl, attacks, cloaked=None, target=None, **kw):
    """Run the node's execute; returns (report dict, NodeOutput)."""
    out = cl.RN.RobustnessCheck.execute(original=cl.image, cloaked=cl.cloaked if cloaked is None else cloaked,
                                        encoder=cl.encoder, target=cl.target if target is None else target,
                                        attacks=attacks, seed=kw.pop("seed", 0), **kw)
    return cl.A.report_from_text(out.args[0]), out


def by_attack(report):
    return {a["attack"]: a for a in report["attacks"]}


def test_clean_image_has_zero_gain_under_every_attack(cl):
    report, _ = check(cl, "none, jpeg:75, noise:0.05, crop:0.9, vae", cloaked=cl.image, vae=cl.vae)
    assert report["clean_gain"] == 0.0
    for row in report["attacks"]:
        assert row["status"] == "ok", row
        assert abs(row["gain"]) < 1e-6, row
        assert row["kept"] is None and row["verdict"] == "no cloak"


def test_known_answers_identity_jpeg100_and_blur_strength(cl):
    report, _ = check(cl, "none, jpeg444:100, jpeg:100, jpeg:50, blur:0.5, blur:1, blur:2, blur:4")
    rows = by_attack(report)
    assert report["clean_gain"] > 0.1  # the cloak did move the latent toward the style
    assert rows["none"]["kept"] == pytest.approx(1.0, abs=1e-6) and rows["none"]["verdict"] == "holds"
    assert rows["none"]["gain"] == pytest.approx(report["clean_gain"], abs=1e-6)
    assert rows["jpeg444:100"]["kept"] >= 0.95, rows["jpeg444:100"]  # near-lossless: keeps nearly all
    # 4:2:0 chroma subsampling (Pillow's default) costs part of it even at q100; lower quality costs more
    assert rows["jpeg:50"]["kept"] < rows["jpeg:100"]["kept"] < rows["jpeg444:100"]["kept"]
    kept = [rows[f"blur:{s:g}"]["kept"] for s in (0.5, 1, 2, 4)]
    assert kept[3] < kept[2] < kept[1] < kept[0], kept
    # PSNR of the attacked image against the original falls with the attack's strength too
    assert rows["blur:4"]["psnr"] < rows["blur:0.5"]["psnr"]


def test_every_attack_runs_on_the_trained_taesd(cl):
    attacks = cl.A.DEFAULT_ATTACKS.replace("impress:50", "impress:4")
    report, out = check(cl, attacks, vae=cl.vae)
    rows = by_attack(report)
    specs = [a.spec for a in cl.A.parse_attacks(attacks)]
    assert list(rows) == specs
    ran = specs  # no MODEL wired: the diffusion rows run with the pack's miniature purifier for TAESD's latents
    for spec in ran:
        row = rows[spec]
        assert row["status"] == "ok", row
        assert all(math.isfinite(row[k]) for k in ("gain", "kept", "psnr", "ssim")), row
        assert row["verdict"] in ("holds", "weakened", "broken")
    for spec in ("diffpure:0.3", "noisy_upscale:0.3"):
        assert rows[spec]["label"].endswith("(miniature purifier)"), rows[spec]
    _, chart, attacked, table, figures = out.args
    assert out.args[0].startswith(table) and json.loads(figures) == json.loads(out.args[0].split("\nJSON:\n")[1])
    b, h, w = cl.image.shape[:3]
    assert tuple(attacked.shape) == (len(ran) * b, h, w, 3)
    cloaked = cl.cloaked[0]
    changed = [float((attacked[k] - cloaked).abs().max()) for k in range(len(ran))]
    assert changed[0] < 1e-6 and min(changed[1:]) > 1e-3, dict(zip(ran, changed))
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3
    assert set(out.ui) >= {"images", "text"}  # chart as a preview image, table as preview text


def test_impress_makes_the_image_its_own_reconstruction(cl):
    autoencode, multiple = cl.RN.vae_autoencoder(cl.vae)
    ctx = cl.A.AttackContext(autoencode=autoencode, multiple=multiple)
    x = cl.cloaked.movedim(-1, 1).clone()
    with torch.no_grad():
        before = float((autoencode(x) - x).pow(2).mean())
    purified, _ = cl.A.CATALOGUE["impress"].run(x, 10, ctx, 0)
    with torch.no_grad():
        after = float((autoencode(purified) - purified).pow(2).mean())
    assert after < 0.8 * before, (before, after)
    assert float((purified - x).abs().max()) <= cl.A.IMPRESS_EPS + 1e-6


def test_report_json_matches_the_table(cl):
    report, out = check(cl, "none, jpeg:75, resize:0.5, noise:0.02, vae, impress:2, diffpure")
    text = out.args[0]
    table = text.split("\n\nJSON:\n")[0]
    assert out.ui["text"][0] == table
    assert f"unattacked target gain {report['clean_gain']:.3f}" in table
    lines = table.splitlines()
    assert "| attack | kept | gain | PSNR | SSIM | HaarPSI | GMSD | verdict |" in lines  # Preview Any renders it
    seen = report["visibility"]
    assert f"HaarPSI {sum(seen['haarpsi']) / len(seen['haarpsi']):.3f}" in table
    for row in report["attacks"]:
        line = next(ln for ln in lines if ln.startswith(f"| {row['label']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        if row["status"] != "ok":
            assert "skipped:" in line and row["reason"] in line
            continue
        assert cells[0] == f"{100 * row['kept']:.1f}%"
        assert [float(c) for c in cells[1:6]] == [round(row["gain"], 3), round(row["psnr"], 2),
                                                   round(row["ssim"], 4), round(row["haarpsi"], 3),
                                                   round(row["gmsd"], 4)]
        assert 0 < row["haarpsi"] <= 1 and row["gmsd"] >= 0
        assert cells[6] == row["verdict"]
    # the rule printed under the table is the one applied
    assert report["thresholds"] == {"holds": 0.7, "broken": 0.3, "min_clean_gain": 0.01}
    for row in report["attacks"]:
        if row["status"] == "ok":
            assert row["verdict"] == cl.A.verdict(row["kept"])


def test_chart_colours_each_bar_by_verdict(cl):
    report, out = check(cl, "none, blur:4")
    chart = (out.args[1][0] * 255).round().to(torch.int16)
    rows = by_attack(report)
    for k, spec in enumerate(("none", "blur:4")):
        y = 48 + k * 24 + 12  # bar rows start at y=48, 24 px each (render_chart)
        colour = torch.tensor(cl.RN.VERDICT_COLOURS[rows[spec]["verdict"]], dtype=torch.int16)
        assert (chart[y, 201] - colour).abs().max() <= 1, (spec, chart[y, 201])
    # a bar's length follows its kept share
    bar = lambda y: int(((chart[y] - chart[y, 201]).abs().amax(-1) <= 1).sum())  # noqa: E731
    assert bar(48 + 12) > bar(48 + 24 + 12)


def test_target_may_be_a_style_target_an_image_or_a_latent(cl):
    attacks = "none, crop:0.9"
    base, _ = check(cl, attacks)
    from_image, _ = check(cl, attacks, target=cl.style)
    latent = cl.nodes.VAEEncode().encode(cl.vae, cl.style)[0]
    from_latent, _ = check(cl, attacks, target=latent)
    for other in (from_image, from_latent):
        for a, b in zip(base["attacks"], other["attacks"]):
            assert a["gain"] == pytest.approx(b["gain"], abs=2e-3), (a, b)
    with pytest.raises(TypeError, match="STYLE_TARGET"):
        check(cl, attacks, target="not a target")


def test_nightshade_poison_is_checked_against_its_anchor(cl):
    poison = cl.nodes.NODE_CLASS_MAPPINGS["NightshadePoison"]
    out = poison.execute(image=cl.image, encoder=cl.encoder, anchor=cl.style, caption="a photo of a cup",
                         intensity="default", render_quality="faster", robustness="on", seed=0, custom_budget=8,
                         budget="adaptive", objective="latent")
    poisoned, poison_report = out.args[0], out.args[-1]
    before, after = map(float, re.search(r"latent distance to anchor ([\d.]+) -> ([\d.]+)", poison_report).groups())
    report, _ = check(cl, "none, jpeg444:100", cloaked=poisoned, target=cl.style)
    rows = by_attack(report)
    assert report["clean_gain"] == pytest.approx(1 - after / before, abs=0.01)  # the poison's own figure
    assert rows["jpeg444:100"]["kept"] >= 0.95


def test_bad_attack_lists_are_named(cl):
    validate = cl.RN.RobustnessCheck.validate_inputs
    assert validate(attacks="jpeg:75\nblur:2 # a comment") is True
    for text, fragment in (("jpeg:75, jpg:50", "'jpg:50'"), ("blur:-1", "sigma must be in"),
                           ("vae:3", "takes no strength"), ("jpeg:high", "must be a number"), ("  ,\n", "no attacks")):
        message = validate(attacks=text)
        assert isinstance(message, str) and fragment in message, (text, message)
    with pytest.raises(ValueError, match="same shape"):
        check(cl, "none", cloaked=cl.cloaked[:, :32])


def tiny_sd15_unet(seed=0):
    """A small SD1.5-shaped UNet from ComfyUI's own classes (BaseModel + SD15 config), weights set explicitly."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    unet_config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                   "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
                   "num_res_blocks": [1, 1], "transformer_depth": [1, 0], "transformer_depth_output": [1, 1, 0, 0],
                   "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
                   "context_dim": 64, "num_head_channels": 16, "use_temporal_attention": False,
                   "use_temporal_resblock": False}
    config = comfy.supported_models.SD15(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(config, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.no_grad():  # comfy.ops layers are not initialised
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / p[0].numel() ** 0.5)
            else:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def test_diffusion_purification_runs_through_comfyui_sampler(cl):
    model = tiny_sd15_unet()
    positive = [[torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1)), {}]]
    kw = dict(vae=cl.vae, model=model, positive=positive, purify_steps=3, purify_cfg=1.0,
              purify_sampler="euler", purify_scheduler="normal")
    report, out = check(cl, "diffpure:0.1, diffpure:0.6, noisy_upscale:0.3", **kw)
    rows = by_attack(report)
    for row in rows.values():
        assert row["status"] == "ok" and math.isfinite(row["gain"]) and math.isfinite(row["psnr"]), row
    attacked = out.args[2]
    assert attacked.shape[0] == 3
    moved = [float((attacked[k] - cl.cloaked[0]).abs().mean()) for k in range(3)]
    assert 0 < moved[0] < moved[1], moved  # noised further along the schedule: changed more
    again = check(cl, "diffpure:0.1", **kw)[1].args[2]
    assert torch.equal(again[0], attacked[0])  # seeded
    for partial in (dict(vae=cl.vae, model=model), dict(model=model, positive=positive)):
        with pytest.raises(ValueError, match="model, positive and vae"):
            check(cl, "diffpure", **partial)


def test_diffusion_rows_run_with_the_miniature_purifier_when_no_model_is_wired(cl, tmp_path, monkeypatch):
    """No MODEL: the pack's purifier for TAESD's latents (models/miniature/purifier_taesd.safetensors, found by
    the probe fingerprint through ComfyUI's VAE scaling) runs DiffPure; more strength changes more; seeded. An
    encoder with no purifier for its latent space lists the rows as skipped, saying why."""
    report, out = check(cl, "diffpure:0.1, diffpure:0.6", vae=cl.vae)
    rows = list(by_attack(report).values())
    assert all(r["status"] == "ok" and r["label"].endswith("(miniature purifier)") for r in rows), rows
    attacked = out.args[2]
    moved = [float((attacked[k] - cl.cloaked[0]).abs().mean()) for k in range(2)]
    assert 0 < moved[0] < moved[1], moved
    assert torch.equal(check(cl, "diffpure:0.1", vae=cl.vae)[1].args[2][0], attacked[0])  # seeded
    monkeypatch.setattr(cl.RN, "PURIFIER_DIR", str(tmp_path))  # a folder with no purifier in it
    row = by_attack(check(cl, "diffpure:0.3", vae=cl.vae)[0])["diffpure:0.3"]
    assert row["status"] == "skipped" and "no miniature purifier" in row["reason"], row


def test_workflow_reports_on_the_real_server(server):
    """workflows/robustness_report.json as submitted from the UI; for time on 2 CPU cores: a 128x96 crop of the
    bundled samples, the cloak at "faster" and IMPRESS at 10 steps."""
    import demo
    from comfy_server import texts, ui_to_api
    from PIL import Image
    for name in ("coffee.png", "coffee_style.png"):
        with Image.open(os.path.join(ROOT, "samples", name)) as im:
            im.convert("RGB").crop((128, 80, 256, 176)).save(os.path.join(server.input_dir, "crop_" + name))
    with open(WORKFLOW, encoding="utf-8") as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    demo.point_load_images(prompt, "crop_coffee.png", "crop_coffee_style.png")
    ids = {n["class_type"]: k for k, n in prompt.items()}
    prompt[ids["GlazePerturb"]]["inputs"]["render_quality"] = "faster"
    check_inputs = prompt[ids["RobustnessCheck"]]["inputs"]
    assert check_inputs["attacks"].split("\n") == [a.spec for a in parse_default_attacks()]
    check_inputs["attacks"] = check_inputs["attacks"].replace("impress:50", "impress:10")
    entry = server.run(prompt, timeout=1800)
    shown = texts(entry)
    table, figures = shown[ids["RobustnessCheck"]]  # the node's own text: the table, then the JSON alone
    assert shown[ids["PreviewAny"]][0] == table  # the table output, shown by Preview Any as Markdown
    report = json.loads(figures)
    rows = by_attack(report)
    assert report["clean_gain"] > 0.1 and rows["none"]["kept"] == pytest.approx(1.0)
    assert all(rows[s]["status"] == "ok" for s in ("jpeg:75", "vae", "impress:10"))
    # no MODEL in the bundled workflow: the pack's miniature purifier for TAESD's latents runs the diffusion rows
    assert rows["diffpure:0.3"]["status"] == "ok" and "miniature purifier" in rows["diffpure:0.3"]["label"]
    for row in report["attacks"]:
        if row["status"] == "ok":
            assert re.search(re.escape(row["label"]) + r" \| [\d.]+%", table)
    charts = server.output_files({"outputs": {ids["RobustnessCheck"]: entry["outputs"][ids["RobustnessCheck"]]}})
    assert len(charts) == 1 and os.path.isfile(charts[0])  # the chart, shown on the node in the UI
    with Image.open(charts[0]) as im:
        assert im.width == 760 and im.height == 48 + 24 * len(report["attacks"]) + 40


def parse_default_attacks():
    import importlib
    import importlib.util
    import sys
    name = "cloak_engine_for_robustness_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "engine", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(ROOT, "engine")])
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    attacks = importlib.import_module(name + ".attacks")
    return attacks.parse_attacks(attacks.DEFAULT_ATTACKS)
