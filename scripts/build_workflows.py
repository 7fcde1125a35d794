"""Write the img2img, portfolio and mimicry-test workflows (UI format) from the descriptions below.

    .host/venv/bin/python scripts/build_workflows.py            # starts the host server for /object_info

Widget order and socket types come from the running server's /object_info, so the files match what ComfyUI's
front end saves; positions are laid out on a grid of columns so that no two nodes overlap (the tests check).
Edit a description here and re-run instead of hand-editing the JSON.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_server import ComfyServer, widget_slots  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = "cloak_tiny_sd15.safetensors"
STYLE_PROMPT = "a flat-colour woodcut poster, bold black outlines, in the style of a linocut print"
CAPTION = "an artwork by sks artist"
COL = 380  # column pitch; nodes are 340 wide


class Graph:
    def __init__(self, info: dict):
        self.info, self.nodes, self.links, self.col_y = info, [], [], {}

    def add(self, type_, col: int, widgets: dict | None = None, title: str | None = None, height: int | None = None,
            width: int = 340, mode: int = 0, text: str | None = None) -> dict:
        node_id = len(self.nodes) + 1
        spec = self.info.get(type_)
        outputs, inputs, values = [], [], []
        if type_ == "MarkdownNote":
            values = [text]
        else:
            names, kinds = spec.get("output_name") or spec["output"], spec["output"]
            outputs = [{"name": n, "type": t, "links": None, "slot_index": i}
                       for i, (n, t) in enumerate(zip(names, kinds))]
            for i, is_list in enumerate(spec.get("output_is_list") or []):
                if is_list:
                    outputs[i]["shape"] = 6
            for section in ("required", "optional"):
                for name, s in (spec["input"].get(section) or {}).items():
                    kind = s[0]
                    if isinstance(kind, str) and kind not in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO") or (
                            len(s) > 1 and isinstance(s[1], dict) and s[1].get("forceInput")):
                        inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": None})
            widgets = widgets or {}
            for name, role in widget_slots(spec):
                if role == "value":
                    s = {**(spec["input"].get("required") or {}), **(spec["input"].get("optional") or {})}[name]
                    opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                    choices = s[0] if isinstance(s[0], list) else opts.get("options") or [None]
                    default = opts.get("default", choices[0] if choices else None)
                    values.append(widgets.get(name, default))
                elif role == "control":
                    values.append("fixed")
                elif role == "upload":
                    values.append("image")
            unknown = set(widgets) - {n for n, _ in widget_slots(spec)}
            if unknown:
                raise KeyError(f"{type_}: no widget {sorted(unknown)}")
        n_widgets = len(values)
        if height is None:
            height = 46 + 22 * max(len(inputs), len(outputs)) + 26 * n_widgets
        y = self.col_y.get(col, 40)
        node = {"id": node_id, "type": type_, "pos": [40 + col * COL, y], "size": [width, height], "flags": {},
                "order": node_id - 1, "mode": mode, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": type_}, "widgets_values": values}
        if title:
            node["title"] = title
        self.col_y[col] = y + height + 70  # title bar (30) and a gap
        self.nodes.append(node)
        return node

    def link(self, src: dict, out: str, dst: dict, inp: str) -> None:
        o = next(i for i, x in enumerate(src["outputs"]) if x["name"] == out)
        i = next(i for i, x in enumerate(dst["inputs"]) if x["name"] == inp)
        link_id = len(self.links) + 1
        kind = src["outputs"][o]["type"]
        self.links.append([link_id, src["id"], o, dst["id"], i, kind])
        src["outputs"][o]["links"] = (src["outputs"][o]["links"] or []) + [link_id]
        dst["inputs"][i]["link"] = link_id

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}},
                "version": 0.4}


def img2img_target(g: Graph, artwork_node: dict, artwork_out: str, col: int = 1):
    """Load Checkpoint → CLIP prompts → VAE Encode → KSampler (denoise 0.4) → VAE Decode: Glaze's target."""
    ckpt = g.add("CheckpointLoaderSimple", 0, {"ckpt_name": CHECKPOINT},
                 title="Load Checkpoint (swap in your SD1.5 model)")
    pos = g.add("CLIPTextEncode", col, {"text": STYLE_PROMPT}, title="Target style prompt (a style unlike yours)",
                height=130)
    neg = g.add("CLIPTextEncode", col, {"text": "blurry, low quality"}, title="Negative prompt", height=110)
    enc = g.add("VAEEncode", col)
    ks = g.add("KSampler", col + 1, {"seed": 0, "steps": 20, "cfg": 7.0, "denoise": 0.4},
               title="img2img: your artwork in the target style (denoise 0.4)")
    dec = g.add("VAEDecode", col + 1, title="Target-style copy")
    for a, o, b, i in ((ckpt, "CLIP", pos, "clip"), (ckpt, "CLIP", neg, "clip"), (artwork_node, artwork_out, enc, "pixels"),
                       (ckpt, "VAE", enc, "vae"), (ckpt, "MODEL", ks, "model"), (pos, "CONDITIONING", ks, "positive"),
                       (neg, "CONDITIONING", ks, "negative"), (enc, "LATENT", ks, "latent_image"),
                       (ks, "LATENT", dec, "samples"), (ckpt, "VAE", dec, "vae")):
        g.link(a, o, b, i)
    return ckpt, dec


NOTE_IMG2IMG = """## Glaze with an img2img target
1. **Load Checkpoint**: your SD1.5 model (e.g. `v1-5-pruned-emaonly.safetensors`). The shipped name is the tiny random-weight checkpoint the tests build: its images are noise.
2. **Artwork**: your image (any size). The **target style prompt** names a style *unlike yours*; img2img at denoise 0.4 turns your artwork into that style, which is Glaze's target.
3. The cloak is made against the checkpoint's own VAE **and** a tiny autoencoder (`tae_name`, e.g. `taef2_encoder.pth` or `taesd_encoder.pth` in `models/vae_approx`): an ensemble transfers better. No such file? Bypass that node (Ctrl+B).
4. **Glaze Perturb**: intensity and render quality as in Glaze. The report table gives PSNR, SSIM and how far each latent moved toward the target."""

NOTE_PORTFOLIO = """## Cloak a portfolio
Put your images in a folder inside ComfyUI's `input` folder and pick it in **Load Artwork Folder** (the pack ships `cloak_portfolio`). Each image is style-transferred (img2img, denoise 0.4), cloaked on its own and saved as PNG under its **original name** in `output/cloak/portfolio` (never overwriting: `name_1.png` if taken), with one `cloak_report.md` for the set.

Swap in your SD1.5 checkpoint; the shipped one is a tiny random-weight test model."""

NOTE_MIMICRY = """## Does a LoRA trained on my cloaked images copy my style?
Trains two LoRAs with ComfyUI's own **Train LoRA** (one on your clean images, one on the cloaked copies), generates with each under the same prompt and seed, and scores both with **Style Mimicry Score**: how far each LoRA's images are from your style and from the target style, in the encoder's latent statistics and in pixel colour/texture statistics. The cloak works when the cloaked-set LoRA has the higher **target share**.

For a real answer: your SD1.5 checkpoint, 10+ images, a few hundred training steps (GPU). With the shipped tiny random-weight checkpoint the scores only show that the test runs."""


NOTE_MINIATURE = """## Mimicry in miniature, on a CPU
Trains two small latent diffusion models from scratch (**Train Miniature Mimic**: one on crops of your clean images, one on the cloaked copies, same seed), draws samples from each (**Sample Miniature Mimic**, same seed) and scores where the samples land between your style and the target style (**Style Mimicry Score**). The cloak works when the cloaked-set mimic has the higher **target share**.

What it shows: local style (colour, texture, strokes) at the crop's scale, learned through the encoder's latents, in minutes on a CPU. What it cannot: a full SD LoRA on a GPU (that is the *lora_mimicry_test* workflow), composition, or prompts. For a real answer: set the encoder's tae_name to **taef2_encoder.pth** (with its decoder beside it), 10+ images, 1500 steps; the demo TAESD is a toy. The README's mimicry table says what the bench measured."""


def mimicry_miniature(info: dict) -> dict:
    g = Graph(info)
    art = g.add("LoadImage", 0, {"image": "coffee.png"}, title="Your images", height=340)
    style_img = g.add("LoadImage", 0, {"image": "coffee_style.png"}, title="Target style image", height=340)
    enc = g.add("LoadVAEEncoder", 1, {"tae_name": "taesd_encoder.safetensors"},
                title="Encoder: a TAE with its decoder (taef2 for real)")
    style = g.add("StyleTargetLatents", 1, {"mode": "per_image"})
    glaze = g.add("GlazePerturb", 1, height=260)
    train = {"steps": 1500, "seed": 0, "crop_size": 64}
    t_clean = g.add("TrainMiniatureMimic", 2, train, title="Train mimic: clean set")
    t_cloak = g.add("TrainMiniatureMimic", 2, train, title="Train mimic: cloaked set")
    s_clean = g.add("SampleMiniatureMimic", 3, {"count": 16, "seed": 1000}, title="Samples: clean-set mimic")
    s_cloak = g.add("SampleMiniatureMimic", 3, {"count": 16, "seed": 1000}, title="Samples: cloaked-set mimic")
    score = g.add("StyleMimicryScore", 4, {"model_kind": "miniature mimic"}, height=460, width=340)
    report = g.add("PreviewAny", 5, title="Scores (Markdown)", height=360, width=560)
    train_report = g.add("PreviewAny", 5, title="Training report (cloaked)", height=160, width=560)
    g.add("MarkdownNote", 0, title="How to use", height=330, width=340, text=NOTE_MINIATURE)
    for a, o, b, i in (
            (enc, "encoder", style, "encoder"), (style_img, "IMAGE", style, "style"),
            (art, "IMAGE", glaze, "image"), (enc, "encoder", glaze, "encoder"),
            (style, "style_target", glaze, "style_target"),
            (art, "IMAGE", t_clean, "images"), (enc, "encoder", t_clean, "encoder"),
            (glaze, "cloaked", t_cloak, "images"), (enc, "encoder", t_cloak, "encoder"),
            (t_clean, "mimic", s_clean, "mimic"), (t_cloak, "mimic", s_cloak, "mimic"),
            (enc, "encoder", score, "encoder"), (art, "IMAGE", score, "artist"),
            (style_img, "IMAGE", score, "target"), (s_clean, "samples", score, "clean_lora"),
            (s_cloak, "samples", score, "cloaked_lora"),
            (score, "report", report, "source"), (t_cloak, "report", train_report, "source")):
        g.link(a, o, b, i)
    return g.to_json()


def glaze_img2img_target(info: dict) -> dict:
    g = Graph(info)
    art = g.add("LoadImage", 0, {"image": "coffee.png"}, title="Artwork", height=340)
    ckpt, target = img2img_target(g, art, "IMAGE")
    preview_target = g.add("PreviewImage", 2, title="Target style (img2img)", height=260)
    vae_enc = g.add("LoadVAEEncoder", 3, title="Encoder: the checkpoint's VAE")
    tae_enc = g.add("LoadVAEEncoder", 3, {"tae_name": "taef2_encoder.pth"},
                    title="+ a tiny autoencoder (ensemble; Ctrl+B to skip)")
    style = g.add("StyleTargetLatents", 3, {"mode": "per_image"})
    glaze = g.add("GlazePerturb", 4, height=260)
    save = g.add("SaveImage", 5, {"filename_prefix": "cloak/glazed_img2img"}, height=300, title="Cloaked artwork")
    pert = g.add("PreviewImage", 5, title="Perturbation (amplified)", height=260)
    report = g.add("PreviewAny", 5, title="Report", height=300, width=520)
    g.add("MarkdownNote", 0, title="How to use", height=330, width=340, text=NOTE_IMG2IMG)
    for a, o, b, i in ((target, "IMAGE", preview_target, "images"), (ckpt, "VAE", vae_enc, "vae"),
                       (vae_enc, "encoder", tae_enc, "encoder"), (tae_enc, "encoder", style, "encoder"),
                       (target, "IMAGE", style, "style"), (art, "IMAGE", glaze, "image"),
                       (tae_enc, "encoder", glaze, "encoder"), (style, "style_target", glaze, "style_target"),
                       (glaze, "cloaked", save, "images"), (glaze, "perturbation", pert, "images"),
                       (glaze, "report", report, "source")):
        g.link(a, o, b, i)
    return g.to_json()


def glaze_portfolio(info: dict) -> dict:
    g = Graph(info)
    folder = g.add("LoadArtworkFolder", 0, {"folder": "cloak_portfolio"}, title="Your portfolio (a folder in input/)")
    ckpt, target = img2img_target(g, folder, "images")
    vae_enc = g.add("LoadVAEEncoder", 3, title="Encoder: the checkpoint's VAE")
    style = g.add("StyleTargetLatents", 3, {"mode": "per_image"})
    glaze = g.add("GlazePerturb", 4, height=260)
    save = g.add("SaveCloakedFolder", 5, {"folder": "cloak/portfolio"}, height=300,
                 title="Save with the original names")
    report = g.add("PreviewAny", 5, title="Report for the set", height=300, width=520)
    g.add("MarkdownNote", 0, title="How to use", height=300, width=340, text=NOTE_PORTFOLIO)
    for a, o, b, i in ((ckpt, "VAE", vae_enc, "vae"), (vae_enc, "encoder", style, "encoder"),
                       (target, "IMAGE", style, "style"), (folder, "images", glaze, "image"),
                       (vae_enc, "encoder", glaze, "encoder"), (style, "style_target", glaze, "style_target"),
                       (glaze, "cloaked", save, "images"), (folder, "names", save, "names"),
                       (glaze, "report", save, "reports"), (folder, "notes", save, "notes"),
                       (save, "report", report, "source")):
        g.link(a, o, b, i)
    return g.to_json()


def lora_mimicry_test(info: dict) -> dict:
    g = Graph(info)
    folder = g.add("LoadArtworkFolder", 0, {"folder": "cloak_portfolio"}, title="Your images (a folder in input/)")
    ckpt, target = img2img_target(g, folder, "images")
    vae_enc = g.add("LoadVAEEncoder", 3, title="Encoder: the checkpoint's VAE")
    style = g.add("StyleTargetLatents", 3, {"mode": "per_image"})
    glaze = g.add("GlazePerturb", 3, height=260)
    train_args = {"steps": 100, "learning_rate": 0.0005, "rank": 8, "training_dtype": "bf16", "lora_dtype": "bf16",
                  "gradient_checkpointing": True}
    ds_clean = g.add("MakeTrainingDataset", 4, {"texts": CAPTION}, title="Training set: clean", height=150)
    ds_cloak = g.add("MakeTrainingDataset", 4, {"texts": CAPTION}, title="Training set: cloaked", height=150)
    gen_prompt = g.add("CLIPTextEncode", 4, {"text": CAPTION}, title="Prompt to test mimicry", height=120)
    empty = g.add("EmptyLatentImage", 4, {"width": 128, "height": 128, "batch_size": 2},
                  title="Size and count of the test images")
    lora_clean = g.add("TrainLoraNode", 5, train_args, title="Train LoRA: clean set")
    lora_cloak = g.add("TrainLoraNode", 5, train_args, title="Train LoRA: cloaked set")
    ks_clean = g.add("KSampler", 6, {"seed": 42, "steps": 20, "cfg": 7.0}, title="Generate with the clean-set LoRA")
    ks_cloak = g.add("KSampler", 6, {"seed": 42, "steps": 20, "cfg": 7.0}, title="Generate with the cloaked-set LoRA")
    dec_clean = g.add("VAEDecode", 7, title="Clean-set LoRA images")
    dec_cloak = g.add("VAEDecode", 7, title="Cloaked-set LoRA images")
    score = g.add("StyleMimicryScore", 8, height=460, width=340)
    report = g.add("PreviewAny", 9, title="Scores (Markdown)", height=360, width=560)
    g.add("MarkdownNote", 0, title="How to use", height=330, width=340, text=NOTE_MIMICRY)
    neg = next(n for n in g.nodes if n.get("title") == "Negative prompt")
    for a, o, b, i in (
            (ckpt, "VAE", vae_enc, "vae"), (vae_enc, "encoder", style, "encoder"), (target, "IMAGE", style, "style"),
            (folder, "images", glaze, "image"), (vae_enc, "encoder", glaze, "encoder"),
            (style, "style_target", glaze, "style_target"),
            (folder, "images", ds_clean, "images"), (ckpt, "VAE", ds_clean, "vae"), (ckpt, "CLIP", ds_clean, "clip"),
            (glaze, "cloaked", ds_cloak, "images"), (ckpt, "VAE", ds_cloak, "vae"), (ckpt, "CLIP", ds_cloak, "clip"),
            (ckpt, "CLIP", gen_prompt, "clip"),
            (ckpt, "MODEL", lora_clean, "model"), (ds_clean, "latents", lora_clean, "latents"),
            (ds_clean, "conditioning", lora_clean, "positive"),
            (ckpt, "MODEL", lora_cloak, "model"), (ds_cloak, "latents", lora_cloak, "latents"),
            (ds_cloak, "conditioning", lora_cloak, "positive"),
            (lora_clean, "model", ks_clean, "model"), (gen_prompt, "CONDITIONING", ks_clean, "positive"),
            (neg, "CONDITIONING", ks_clean, "negative"), (empty, "LATENT", ks_clean, "latent_image"),
            (lora_cloak, "model", ks_cloak, "model"), (gen_prompt, "CONDITIONING", ks_cloak, "positive"),
            (neg, "CONDITIONING", ks_cloak, "negative"), (empty, "LATENT", ks_cloak, "latent_image"),
            (ks_clean, "LATENT", dec_clean, "samples"), (ckpt, "VAE", dec_clean, "vae"),
            (ks_cloak, "LATENT", dec_cloak, "samples"), (ckpt, "VAE", dec_cloak, "vae"),
            (vae_enc, "encoder", score, "encoder"), (folder, "images", score, "artist"),
            (target, "IMAGE", score, "target"), (dec_clean, "IMAGE", score, "clean_lora"),
            (dec_cloak, "IMAGE", score, "cloaked_lora"),
            (score, "report", report, "source")):
        g.link(a, o, b, i)
    return g.to_json()


BUILDERS = {"glaze_img2img_target": glaze_img2img_target, "glaze_portfolio": glaze_portfolio,
            "lora_mimicry_test": lora_mimicry_test, "mimicry_miniature": mimicry_miniature}


def main() -> None:
    with ComfyServer() as server:
        info = server.object_info
    for name, build in BUILDERS.items():
        path = os.path.join(ROOT, "workflows", f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(build(info), f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(path)


if __name__ == "__main__":
    main()
