"""SavePoisonDataset: writes poison samples as a LoRA training set (image + caption .txt pairs).

Layout (what kohya-ss sd-scripts, ai-toolkit, OneTrainer and ComfyUI's own Load Image and Text Dataset
read): ``<output>/<folder>/<repeats>_<concept>/<prefix>_00001.png`` + ``<prefix>_00001.txt``; with
repeats 0 the pairs go straight into ``<output>/<folder>/``. Only inside ComfyUI's output folder; a
path that climbs out of it is refused; an existing file is never overwritten (numbering continues).
The images/texts outputs are lists, as ComfyUI's Make Training Dataset → Train LoRA take them.
"""
from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch
from PIL import Image

import folder_paths
from comfy_api.latest import io

from .files import MAX_NAME, SavedFiles, plain_name, safe_subfolder

_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<n>\d{5,})\.(png|txt)$")


def split_images(images: list) -> list[torch.Tensor]:
    """A list of IMAGE batches → a list of single images ``[1, H, W, 3]``."""
    out = []
    for batch in images:
        if not isinstance(batch, torch.Tensor) or batch.ndim not in (3, 4):
            raise ValueError(f"images: expected IMAGE tensors, got {type(batch).__name__}")
        batch = batch[None] if batch.ndim == 3 else batch
        out += [batch[i:i + 1, ..., :3] for i in range(batch.shape[0])]
    if not out:
        raise ValueError("images: nothing to save; connect the poisoned images")
    return out


def pair_captions(captions: list, count: int) -> list[str]:
    texts = [str(c).strip() for c in captions]
    if len(texts) == 1:
        return texts * count
    if len(texts) != count:
        raise ValueError(f"got {len(texts)} captions for {count} images: give one caption per image or one for all")
    return texts


def next_free_index(directory: str, prefix: str) -> int:
    """One past the highest ``<prefix>_NNNNN`` number in use (images or captions)."""
    top = 0
    for name in os.listdir(directory):
        m = _NUMBERED.match(name)
        if m and m.group("prefix") == prefix:
            top = max(top, int(m.group("n")))
    return top + 1


def write_pairs(directory: str, prefix: str, images: list[torch.Tensor], captions: list[str]) -> list[str]:
    """Write PNG + .txt pairs with exclusive creation (never overwriting); returns the image paths."""
    os.makedirs(directory, exist_ok=True)
    index, written = next_free_index(directory, prefix), []
    for image, caption in zip(images, captions):
        pixels = np.clip(image[0].float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        while True:
            stem = os.path.join(directory, f"{prefix}_{index:05d}")
            index += 1
            try:
                with open(stem + ".txt", "x", encoding="utf-8") as f:
                    f.write(caption + "\n")
            except FileExistsError:
                continue
            try:
                with open(stem + ".png", "xb") as f:
                    Image.fromarray(pixels).save(f, format="PNG")
            except FileExistsError:
                os.remove(stem + ".txt")
                continue
            break
        written.append(stem + ".png")
    return written


class SavePoisonDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SavePoisonDataset",
            display_name="Save Poison Dataset (Cloak)",
            category="cloak",
            description="Saves poison samples as a LoRA training set: PNG + caption .txt pairs under ComfyUI's "
                        "output folder, never overwriting. Its outputs feed Make Training Dataset → Train LoRA.",
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The poisoned images (batches are split into single images)."),
                io.String.Input("captions", force_input=True,
                                tooltip="Captions from NightshadePoison: one per image, or one for all."),
                io.String.Input("folder", default="poison_set",
                                tooltip="Folder inside ComfyUI's output folder (subfolders with '/'); absolute "
                                        "paths and '..' are refused."),
                io.Int.Input("repeats", default=10, min=0, max=10000,
                             tooltip="kohya-ss layout: pairs go into '<repeats>_<concept>' inside the folder "
                                     "(times each image is seen per epoch). 0: straight into the folder."),
                io.String.Input("concept", default="poison",
                                tooltip="The concept part of the '<repeats>_<concept>' subfolder name."),
                io.String.Input("filename_prefix", default="poison",
                                tooltip="Files are named <prefix>_00001.png/.txt, numbered after any already there."),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True,
                                tooltip="The saved images, one per list item (for Make Training Dataset)."),
                io.String.Output(display_name="texts", is_output_list=True,
                                 tooltip="Their captions, one per list item (for Make Training Dataset)."),
                io.String.Output(display_name="folder", tooltip="The absolute folder the pairs were written to."),
            ],
        )

    @classmethod
    def execute(cls, images, captions, folder, repeats, concept, filename_prefix) -> io.NodeOutput:
        folder, repeats, concept, prefix = folder[0], repeats[0], concept[0], filename_prefix[0]
        singles = split_images(images)
        texts = pair_captions(captions, len(singles))
        safe_subfolder(folder_paths.get_output_directory(), folder)  # the folder itself, for its own error
        max_part = MAX_NAME
        if repeats > 0:  # the concept may use all of MAX_NAME: the "<repeats>_" prefix comes on top
            folder = f"{folder.strip().rstrip('/')}/{repeats}_{plain_name(concept, 'concept')}"
            max_part += len(f"{repeats}_")
        directory = safe_subfolder(folder_paths.get_output_directory(), folder, max_part)
        written = write_pairs(directory, plain_name(prefix, "filename_prefix"), singles, texts)
        logging.info("SavePoisonDataset: wrote %d image/caption pairs to %s", len(written), directory)
        summary = f"{len(written)} image/caption pairs in {directory}: " + ", ".join(os.path.basename(p) for p in written)
        return io.NodeOutput(singles, texts, directory, ui=SavedFiles(written, summary))
