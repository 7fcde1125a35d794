"""LoadArtworkFolder and SaveCloakedFolder: cloak a whole portfolio, keeping each file's name.

Load gives a ComfyUI list (one item per file, sizes may differ), so every node between them runs once per
image; Save writes each image under its original name into a folder inside ComfyUI's output folder, never
overwriting (``name.png``, then ``name_1.png``, ...), plus one Markdown report for the set.
"""
from __future__ import annotations

import logging
import os
import re
from io import BytesIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

import folder_paths
from comfy_api.latest import io

from .files import MAX_NAME, SavedFiles, input_subfolder, inside, safe_subfolder

Image.init()
# every still or animated format Pillow reads, by extension (PNG, JPEG, WebP, TIFF, BMP, GIF, ...); Pillow reads a
# file by its content, so a PNG named .jpg loads as the PNG it is
IMAGE_EXTENSIONS = tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))
# files a system leaves in folders, never artwork: passed over without a note
SYSTEM_FILES = ("thumbs.db", "desktop.ini")
# the largest picture a portfolio loads (pixels): 16384², 3 GiB as ComfyUI's float image; the cloak's own estimate
# decides afterwards whether it can be cloaked here (tiles) or must be downscaled
MAX_PIXELS = 2**28
# the smallest side a portfolio image may have (px; the smallest any encoder takes, TAESD's; TAEF2 needs 64):
# smaller pictures (icons) are left out, named in the report
MIN_SIDE = 32
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def folder_files(directory: str) -> list[str]:
    """Every regular file directly in ``directory`` a person put there, sorted by name (case-insensitive)."""
    return sorted((f for f in os.listdir(directory) if not f.startswith(".") and f.lower() not in SYSTEM_FILES
                   and os.path.isfile(os.path.join(directory, f))), key=str.lower)


def image_files(directory: str, root: str, listing: list[str] | None = None) -> list[str]:
    """Image files directly in ``directory`` (any format Pillow reads), sorted by name (case-insensitive); of
    ``listing`` (:func:`folder_files`) when the caller has it. A file that links outside ``root`` (ComfyUI's input
    folder) is refused, as a folder that does is: one rule for both."""
    names = [f for f in (folder_files(directory) if listing is None else listing)
             if f.lower().endswith(IMAGE_EXTENSIONS)]
    for f in names:
        if not inside(root, os.path.join(directory, f)):
            raise ValueError(f"{f} in {directory} links to {os.path.realpath(os.path.join(directory, f))}, outside "
                             f"ComfyUI's input folder {os.path.realpath(root)}; copy the file in instead of linking it")
    return names


class TooBig(ValueError):
    """A picture over MAX_PIXELS: left out of a portfolio, named in its report."""


def read_image(path: str, warnings: list[str] | None = None) -> Image.Image:
    """The file, fully decoded (the first frame of an animation, said in ``warnings``); a truncated or corrupt one is
    refused (PIL would fill the missing part with black, and the cloak would be saved under the artwork's name), a
    picture over MAX_PIXELS refused with :class:`TooBig`, naming its size (Pillow's own decompression-bomb limit,
    about 179 MP, is replaced by MAX_PIXELS here: a large painting is no bomb)."""
    name = os.path.basename(path)
    previous = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # ComfyUI's loaders turn it on; a portfolio must not lose half an image
    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, from the header, before anything is decoded
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise TooBig(f"{name}: {w}x{h} ({w * h / 1e6:.0f} MP) is over the {MAX_PIXELS / 1e6:.0f} MP a portfolio "
                         "image may have here: downscale it (its long side to 8192 px keeps it sharp) and load it "
                         "again")
        frames = getattr(img, "n_frames", 1)
        img.load()
    except TooBig:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name}: the file is truncated or corrupt ({e}); export it again or move it out of the "
                         "folder") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = previous
    if frames > 1 and warnings is not None:
        warnings.append(f"{name}: an animation of {frames} frames: only its first frame was loaded (and is cloaked and "
                     "saved as a still PNG); the other frames are not protected. Cloak an animation frame by frame")
    return ImageOps.exif_transpose(img)


def to_srgb(img: Image.Image, name: str, notes: list[str] | None = None) -> Image.Image:
    """An RGB(A)/palette image with an embedded colour profile other than sRGB converted to sRGB (a Display P3
    picture read as sRGB looks washed out, and its cloak would be saved so), said in ``notes``; other images as
    they are."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "P", "PA", "LA", "L"):
        return img
    from PIL import ImageCms
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc))
        described = (ImageCms.getProfileDescription(source) or "").strip()
    except (OSError, ImageCms.PyCMSError):
        if notes is not None:
            notes.append(f"{name}: its embedded colour profile cannot be read; the pixels were taken as sRGB")
        return img
    if "srgb" in described.lower().replace(" ", ""):
        return img
    if img.mode != "RGB":  # transparency composited on white first, as every portfolio image is
        img = Image.fromarray((to_float_rgb(img) * 255 + 0.5).astype(np.uint8))
    converted = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    if notes is not None:
        notes.append(f"{name}: converted from its colour profile ({described or 'unnamed'}) to sRGB; the cloak is "
                     "saved in sRGB")
    return converted


def to_float_rgb(img: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` float32 in 0..1 from any PIL mode: 16-bit and 32-bit integer greys scaled by their own range
    (not clipped at 255, which turned a 16-bit PNG white), float greys taken as 0..1, palette and alpha
    composited on white, CMYK and 1-bit converted."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and grey.max(initial=0) > 65535:  # a true 32-bit image
            grey = grey / float(2**32 - 1) if grey.min(initial=0) >= 0 else (grey - grey.min()) / max(np.ptp(grey), 1)
        else:
            grey = grey / 65535.0
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if img.mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        grey = grey / 255.0 if grey.max(initial=0) > 1.0 else grey
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_rgb(path: str, notes: list[str] | None = None, warnings: list[str] | None = None) -> torch.Tensor:
    """An image file as IMAGE ``[1, H, W, 3]`` (EXIF rotation applied; an embedded colour profile converted to sRGB;
    transparency composited on white; 16-bit greys keep their levels: see :func:`to_float_rgb`). What was changed
    on the way is said in ``notes`` (a profile) or, where part of the artwork goes unprotected, ``warnings`` (an
    animation's other frames)."""
    img = read_image(path, warnings)
    img = to_srgb(img, os.path.basename(path), notes)
    if img.mode.startswith(("I", "F")):
        logging.info("LoadArtworkFolder: %s is a %s image; its cloak is saved with 8-bit levels",
                     os.path.basename(path), img.mode)
    return torch.from_numpy(to_float_rgb(img))[None]


def safe_stem(name: str) -> str:
    """The file name's stem, without path separators or characters Windows refuses, at most MAX_NAME long
    (a longer original name is cut, not refused: the image is still saved)."""
    stem = _UNSAFE.sub("_", os.path.splitext(os.path.basename(str(name)))[0]).strip(" .")
    while len(stem.encode()) > MAX_NAME:
        stem = stem[:-1]
    return stem.strip(" .") or "image"


def output_stems(names: list[str]) -> list[str]:
    """The stem each image is saved under: its file name's, or, where two names of the set share a stem
    (``a.jpg`` and ``a.png``), the stem with the source extension (``a_jpg``), so no reader mixes them up; a PNG
    source keeps the plain stem."""
    stems = [safe_stem(n) for n in names]
    exts = [os.path.splitext(os.path.basename(str(n)))[1].lower().lstrip(".") for n in names]
    shared = {st.lower() for st in stems if sum(o.lower() == st.lower() for o in stems) > 1}
    out = []
    for stem, ext in zip(stems, exts):
        keep_plain = stem.lower() not in shared or (ext == "png" and exts.count("png") == 1)
        out.append(stem if keep_plain or not ext else safe_stem(f"{stem}_{ext}"))
    return out


def create_exclusive(directory: str, stem: str, ext: str, write) -> str:
    """Write ``stem.ext`` (or ``stem_1.ext``, ...) with exclusive creation; returns the file name used."""
    for n in range(100000):
        name = f"{stem}{'' if n == 0 else f'_{n}'}{ext}"
        try:
            with open(os.path.join(directory, name), "xb") as f:
                write(f)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory} already holds {stem}{ext} and 99999 numbered copies; choose another folder")


def report_rows(reports: list[str], count: int) -> tuple[str, list[str], list[bool]]:
    """(title, one cell per image, whether each image's report warned) from GlazePerturb-style reports (optional
    WARNING lines first, a title line, notes, then 'image i: ...' lines). A cell is the report's warnings, then its
    image lines: a warning is never dropped from the set's table."""
    texts = [str(r) for r in reports or []]
    if len(texts) not in (0, count):
        raise ValueError(f"got {len(texts)} reports for {count} images: connect the report output of the node that "
                         "made the images (one per image)")
    title, cells, warned = "", [], []
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        warnings = [line for line in lines if line.startswith("WARNING")]
        rest = [line for line in lines if not line.startswith("WARNING")]
        title = title or (rest[0] if rest else "")
        body = [line.split(": ", 1)[1] if ": " in line else line for line in rest if line.startswith("image ")]
        cells.append("; ".join(warnings + body).replace("|", "/"))
        warned.append(bool(warnings))
    return title, cells, warned


def set_warning(names: list[str], warned: list[bool]) -> str | None:
    """The set report's first line when any image's own report warned (None when none did)."""
    bad = [name for name, w in zip(names, warned) if w]
    if not bad:
        return None
    return (f"WARNING: {len(bad)} of {len(names)} image(s) came with a warning (not or only weakly protected): "
            + ", ".join(bad) + " (see their rows)")


# names of a loaded folder -> its notes (LoadArtworkFolder's ``notes``): Save Cloaked Folder finds them by the names it
# is given when its notes input is not wired (workflows saved before it existed)
LOAD_NOTES: dict[tuple, str] = {}


def folder_notes(skipped: list[str], warnings: list[str], notes: list[str], count: int) -> str:
    """The load's notes as Markdown lines: a WARNING naming every file left out and every artwork only partly loaded
    first, then every change made on the way ('' when there is nothing to say)."""
    warn = ([f"{len(skipped)} of {count} file(s) in the folder were not loaded, so not cloaked: " + "; ".join(skipped)]
            if skipped else []) + warnings
    return "\n\n".join((["WARNING: " + "; ".join(warn)] if warn else []) + notes)


class LoadArtworkFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadArtworkFolder",
            display_name="Load Artwork Folder (Cloak)",
            category="cloak",
            description="Loads every PNG/JPEG/WebP in a folder of ComfyUI's input folder as a list (one item per "
                        "file, any sizes), with the file names, for cloaking a portfolio.",
            inputs=[
                io.Combo.Input("folder", options=folder_paths.get_input_subfolders(),
                               tooltip="A folder inside ComfyUI's input folder (put your portfolio there). The "
                                       "pack ships one sample folder, cloak_portfolio."),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True,
                                tooltip="One image per file, in name order (each keeps its own size)."),
                io.String.Output(display_name="names", is_output_list=True,
                                 tooltip="The file names, in the same order (for Save Cloaked Folder)."),
                io.String.Output(display_name="notes",
                                 tooltip="What loading left out or changed: files skipped and why (not an image, "
                                         "too small, too large), animations cut to their first frame, colour "
                                         "profiles converted to sRGB. Save Cloaked Folder puts them in its report."),
            ],
        )

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        root = folder_paths.get_input_directory()
        directory = input_subfolder(root, folder)
        if not os.path.isdir(directory):
            raise ValueError(f"folder {folder!r} is not a folder inside ComfyUI's input folder ({root}); create it "
                             "and put your images there")
        listing = folder_files(directory)
        files = image_files(directory, root, listing)
        skipped = [f"{f}: not an image file Pillow reads (by its extension)" for f in listing if f not in files]
        images, names, notes, warnings = [], [], [], []
        for f in files:
            try:
                image = load_rgb(os.path.join(directory, f), notes, warnings)
            except TooBig as e:
                skipped.append(str(e))
                continue
            h, w = image.shape[1:3]
            if min(h, w) < MIN_SIDE:
                skipped.append(f"{f}: {w}x{h} is smaller than the {MIN_SIDE} px a side a cloak needs: upscale it "
                               "first")
                continue
            images.append(image)
            names.append(f)
        text = folder_notes(skipped, warnings, notes, len(names) + len(skipped))
        if text:
            logging.warning("LoadArtworkFolder | %s", text.splitlines()[0])
        if not images:
            raise ValueError(f"folder {folder!r} holds no image that can be cloaked"
                             + (f": {text}" if text else "; add your artwork there"))
        LOAD_NOTES[tuple(names)] = text
        return io.NodeOutput(images, names, text)

    @classmethod
    def fingerprint_inputs(cls, folder):
        root = folder_paths.get_input_directory()
        try:
            directory = input_subfolder(root, folder)
            return [(f, os.path.getmtime(os.path.join(directory, f))) for f in folder_files(directory)]
        except (OSError, ValueError):
            return float("nan")


class SaveCloakedFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaveCloakedFolder",
            display_name="Save Cloaked Folder (Cloak)",
            category="cloak",
            description="Saves each image as PNG under its original file name into a folder of ComfyUI's output "
                        "folder, never overwriting (name_1.png, ... when taken), with one report for the set.",
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The cloaked images, one per list item (batches are split)."),
                io.String.Input("names", force_input=True,
                                tooltip="The original file names (from Load Artwork Folder), one per image."),
                io.String.Input("folder", default="cloak/portfolio",
                                tooltip="Folder inside ComfyUI's output folder (subfolders with '/'); absolute "
                                        "paths and '..' are refused."),
                io.String.Input("reports", force_input=True, optional=True,
                                tooltip="Optional: the report of each image (GlazePerturb's report output), "
                                        "gathered into one table for the set."),
                io.String.Input("notes", force_input=True, optional=True,
                                tooltip="Optional: Load Artwork Folder's notes (files it left out, animations, "
                                        "colour profiles), put at the top of the report. Unwired, the notes of the "
                                        "folder these names were loaded from are used."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="One Markdown table for the set: original name, "
                                                                "saved name, and each image's cloak report."),
                io.String.Output(display_name="folder", tooltip="The absolute folder the images were written to."),
            ],
        )

    @classmethod
    def execute(cls, images, names, folder, reports=None, notes=None) -> io.NodeOutput:
        folder = folder[0]
        load_notes = "\n\n".join(str(n) for n in notes if n) if notes else LOAD_NOTES.get(tuple(names), "")
        load_lines = [line for line in load_notes.split("\n\n") if line.strip()]
        singles = [b[i:i + 1, ..., :3] for b in images for i in range(b.shape[0] if b.ndim == 4 else 1)]
        singles = [s if s.ndim == 4 else s[None] for s in singles]
        if len(names) != len(singles):
            raise ValueError(f"got {len(names)} names for {len(singles)} images: connect the names output of the "
                             "Load Artwork Folder that the images came from")
        title, cells, warned = report_rows(reports, len(singles))
        directory = safe_subfolder(folder_paths.get_output_directory(), folder)
        os.makedirs(directory, exist_ok=True)
        saved = []
        for image, stem in zip(singles, output_stems(names)):
            pixels = np.clip(image[0].float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
            saved.append(create_exclusive(directory, stem, ".png",
                                          lambda f, p=pixels: Image.fromarray(p).save(f, format="PNG")))
        header = "| # | original | saved as |" + (" cloak |" if cells else "")
        warnings = [w for w in (set_warning(list(names), warned),) if w is not None] + [
            line for line in load_lines if line.startswith("WARNING")]
        if warnings:
            warning = "WARNING: " + "; ".join(w.removeprefix("WARNING: ") for w in warnings)
            logging.warning("SaveCloakedFolder | %s", warning)
        else:
            warning = None
        others = [line for line in load_lines if not line.startswith("WARNING")]
        lines = ([f"**{warning}**", ""] if warning else []) + [
            f"### {len(saved)} images saved to `{directory}`", ""] + (
            ["Loading: " + "; ".join(others), ""] if others else []) + ([title, ""] if title else []) + [
            header, "|---|---|---|" + ("---|" if cells else "")]
        for i, (name, out) in enumerate(zip(names, saved)):
            lines.append(f"| {i + 1} | {name} | {out} |" + (f" {cells[i]} |" if cells else ""))
        report = "\n".join(lines)
        report_name = create_exclusive(directory, "cloak_report", ".md", lambda f: f.write(report.encode() + b"\n"))
        logging.info("SaveCloakedFolder: wrote %d images and %s to %s", len(saved), report_name, directory)
        return io.NodeOutput(report, directory, ui=SavedFiles([os.path.join(directory, f) for f in saved], report))
