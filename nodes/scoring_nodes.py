"""StyleMimicryScore: does a LoRA trained on cloaked images copy the artist's style less than one trained on
the clean images? (engine/style_score.py has the measures and why.)"""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from comfy_api.latest import io, ui

from ..engine import as_ensemble, padder
from ..engine.style_score import image_grid, mimicry_scores
from .comfy_adapters import image_to_comfy, image_to_engine
from .schema import CloakEncoder

ROW_LABELS = ("artist (clean set)", "target style", "LoRA on clean set", "LoRA on cloaked set")
MODEL_KINDS = {"LoRA": ROW_LABELS, "miniature mimic": ROW_LABELS[:2] + ("mimic on clean set", "mimic on cloaked set")}
LABEL_WIDTH = 150


def image_list(values: list, what: str) -> list[torch.Tensor]:
    """A ComfyUI list of IMAGE batches → single images in engine layout ``[1, 3, H, W]``."""
    out = []
    for batch in values or []:
        pixels = image_to_engine(batch, what)
        out += [pixels[i:i + 1] for i in range(pixels.shape[0])]
    if not out:
        raise ValueError(f"{what}: no images; connect the {what} images")
    return out


def labelled_grid(rows: list[list[torch.Tensor]], tile: int, labels: tuple[str, ...] = ROW_LABELS) -> torch.Tensor:
    """The image grid with a white label column on the left; engine layout ``[1, 3, H, W]``."""
    grid = image_grid(rows, tile)
    label = Image.new("RGB", (LABEL_WIDTH, grid.shape[-2]), "white")
    draw, font = ImageDraw.Draw(label), ImageFont.load_default()
    for i, text in enumerate(labels[:len(rows)]):
        draw.text((6, 4 + i * (tile + 4) + tile // 2 - 6), text, fill="black", font=font)
    column = torch.from_numpy(np.asarray(label, dtype=np.float32) / 255.0).movedim(-1, 0)[None]
    return torch.cat([column, grid], -1)


def markdown_report(scores: dict, counts: dict, kind: str = "LoRA") -> str:
    names = {"clean_lora": f"{kind} on clean set", "cloaked_lora": f"{kind} on cloaked set", "none":
             "none (no verdict: see the warning)"}
    lines = ([f"**{scores['warning']}**", ""] if scores.get("warning") else []) + ["### Style mimicry test", "",
             "Distances are in units of the artist-to-target gap; **target share** = d(artist) / (d(artist) + "
             f"d(target)): 0 = the artist's style, 1 = the target style. The cloak works when the cloaked-set "
             f"{kind}'s share is higher than the clean-set {kind}'s.", "",
             f"| {kind} | measure | to artist | to target | target share |", "|---|---|---|---|---|"]
    for name in ("clean_lora", "cloaked_lora"):
        for measure, p in scores[name].items():
            lines.append(f"| {names[name]} | {measure} | {p['to_artist']:.3f} | {p['to_target']:.3f} | "
                         f"{p['target_share']:.3f} |")
    lines += ["", "| measure | further from the artist |", "|---|---|"]
    lines += [f"| {m} | {names.get(w, w.replace('_', ' '))} |" for m, w in scores["verdict"].items()]
    lines += ["", "Images: " + ", ".join(f"{names.get(k, k)} {v}" for k, v in counts.items())
              + ". With random or barely trained models these numbers show that the test runs, not that the cloak "
              "protects."] + (["", "Downscaled for scoring: " + "; ".join(scores["notes"]) + "."]
                              if scores.get("notes") else [])
    return "\n".join(lines)


class StyleMimicryScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleMimicryScore",
            display_name="Style Mimicry Score (Cloak)",
            category="cloak",
            description="Scores a mimicry test: where the generations of a LoRA trained on your clean images and "
                        "of one trained on your cloaked images land between your style and the target style, "
                        "in the encoder's latent statistics and in pixel colour/texture statistics.",
            is_input_list=True,
            is_output_node=True,
            inputs=[
                CloakEncoder.Input("encoder", tooltip="From LoadVAEEncoder: the encoder whose latent statistics "
                                                      "are compared (the one the cloak was made against)."),
                io.Image.Input("artist", tooltip="Your clean images (the set the clean LoRA was trained on)."),
                io.Image.Input("target", tooltip="Images in the target style (e.g. the img2img style transfers "
                                                 "the cloak aimed at)."),
                io.Image.Input("clean_lora", tooltip="Generations of the LoRA trained on the clean set."),
                io.Image.Input("cloaked_lora", tooltip="Generations of the LoRA trained on the cloaked set, same "
                                                       "prompts and seeds."),
                io.Int.Input("tile", default=128, min=32, max=1024, step=8,
                             tooltip="Size of each image's cell in the side-by-side grid, in pixels."),
                io.Combo.Input("model_kind", options=list(MODEL_KINDS), default="LoRA", optional=True,
                               tooltip="What made the generations (labels the grid's rows and the report): a LoRA, "
                                       "or Train/Sample Miniature Mimic."),
            ],
            outputs=[
                io.Image.Output(display_name="grid", tooltip="Rows: your images, the target style, the clean-set "
                                                             "LoRA's and the cloaked-set LoRA's generations."),
                io.String.Output(display_name="report", tooltip="A Markdown table: distances and target share "
                                                                "per LoRA and measure."),
                io.String.Output(display_name="scores_json", tooltip="The same numbers as JSON, for scripts."),
            ],
        )

    @classmethod
    def execute(cls, encoder, artist, target, clean_lora, cloaked_lora, tile, model_kind=("LoRA",)) -> io.NodeOutput:
        ensemble, tile = as_ensemble(encoder[0]), tile[0]
        kind = model_kind[0] if isinstance(model_kind, (list, tuple)) else model_kind
        sets = {"artist": image_list(artist, "artist"), "target": image_list(target, "target"),
                "clean_lora": image_list(clean_lora, "clean_lora"),
                "cloaked_lora": image_list(cloaked_lora, "cloaked_lora")}
        ensemble.prepare()

        def encode(pixels):
            pad = padder(*pixels.shape[-2:], ensemble.multiple)
            return [m(pad(pixels)) for m in ensemble.members]

        with torch.no_grad():
            scores = mimicry_scores(sets["artist"], sets["target"],
                                    {k: sets[k] for k in ("clean_lora", "cloaked_lora")}, encode)
        grid = image_to_comfy(labelled_grid([sets[k] for k in sets], tile, MODEL_KINDS[kind]))
        report = markdown_report(scores, {k: len(v) for k, v in sets.items()}, "mimic" if kind != "LoRA" else kind)
        figures = json.dumps(scores, indent=1)
        preview = ui.PreviewImage(grid, cls=cls).as_dict()  # the grid on the node; the text for API clients
        return io.NodeOutput(grid, report, figures, ui={**preview, "text": [report, figures]})
