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
from comfy_api.latest import io, ui

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
MAX_NAME = 120  # characters of one file or folder name part (file systems allow 255 bytes; numbering adds more)
_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<n>\d{5,})\.(png|txt)$")


def safe_subfolder(root: str, folder: str) -> str:
    """``root/folder`` as an absolute path, refusing anything that is not a plain relative path inside root."""
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError("folder is empty: give a folder name inside ComfyUI's output folder, e.g. 'poison_set'")
    parts = folder.strip().replace("\\", "/").split("/")
    if len(folder.encode()) > 8 * MAX_NAME:  # many short parts can still pass the system's path length limit
        raise ValueError(f"folder {folder[:40]!r}... is {len(folder)} characters long; use at most {8 * MAX_NAME}")
    if folder.strip().startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", folder.strip()):
        raise ValueError(f"folder {folder!r} is an absolute path; give a folder inside ComfyUI's output folder")
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"folder {folder!r} climbs out of (or around in) ComfyUI's output folder; "
                         "'..' and '.' are not allowed")
    for p in parts:
        if p and not _NAME.match(p):
            raise ValueError(f"folder {folder!r}: part {p!r} may use only letters, digits, space, '_', '-', '.'")
        if len(p.encode()) > MAX_NAME:
            raise ValueError(f"folder {folder[:40]!r}...: a folder name may be at most {MAX_NAME} characters "
                             f"(got {len(p)}); choose a shorter one")
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *[p for p in parts if p]))
    if os.path.commonpath([base, path]) != base:  # e.g. a symlink inside output pointing elsewhere
        raise ValueError(f"folder {folder!r} resolves to {path}, outside ComfyUI's output folder {base}")
    return path


def plain_name(value: str, what: str) -> str:
    value = (value or "").strip()
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} may use only letters, digits, space, '_', '-', '.' (no path separators)")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} {value[:40]!r}... is {len(value)} characters long; use at most {MAX_NAME}")
    return value


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
        if repeats > 0:
            folder = f"{folder.strip().rstrip('/')}/{repeats}_{plain_name(concept, 'concept')}"
        directory = safe_subfolder(folder_paths.get_output_directory(), folder)
        written = write_pairs(directory, plain_name(prefix, "filename_prefix"), singles, texts)
        logging.info("SavePoisonDataset: wrote %d image/caption pairs to %s", len(written), directory)
        summary = f"{len(written)} image/caption pairs in {directory}: " + ", ".join(os.path.basename(p) for p in written)
        return io.NodeOutput(singles, texts, directory, ui=SavedFiles(written, summary))


class SavedFiles(ui.SavedImages):
    """What a saving node shows: the written images as previews on the node (the canvas shows no plain text
    for most node types), plus the text for API clients."""

    def __init__(self, paths: list[str], text: str):
        root = os.path.realpath(folder_paths.get_output_directory())
        super().__init__([ui.SavedResult(os.path.basename(p), os.path.relpath(os.path.dirname(p), root),
                                         io.FolderType.output) for p in paths])
        self.text = text

    def as_dict(self) -> dict:
        return {**super().as_dict(), "text": (self.text,)}
