"""Rules for the files and folders the pack's nodes read and write: plain names, folders that stay inside
ComfyUI's folders, and what a saving node shows. Shared by the dataset and portfolio nodes."""
from __future__ import annotations

import os
import re

import folder_paths
from comfy_api.latest import io, ui

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
MAX_NAME = 120  # characters of one file or folder name part (file systems allow 255 bytes; numbering adds more)


# names Windows cannot create, whatever the extension (the pack runs on Windows too)
_WINDOWS_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9¹²³]|LPT[0-9¹²³])(\..*)?$", re.IGNORECASE)


def windows_problem(part: str) -> str | None:
    """Why Windows cannot create a file or folder of this name (None when it can)."""
    if _WINDOWS_RESERVED.match(part.strip()):
        return f"{part!r} is a device name that Windows reserves"
    if part != part.rstrip(" ."):
        return f"{part!r} ends in a space or a dot, which Windows drops or refuses"
    return None


def is_absolute(folder: str) -> bool:
    """A path from the file system's root, the home folder or a Windows drive, in either separator style."""
    return folder.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", folder) is not None


def inside(root: str, path: str) -> bool:
    """Whether ``path`` resolves (symlinks followed) inside ``root``."""
    base, real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([base, real]) == base


def input_subfolder(root: str, folder: str) -> str:
    """``root/folder`` for reading (ComfyUI's input folder): any name the file system allows (the dropdown offers
    what is there), but a relative path that stays inside ``root``, symlinks followed."""
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError("folder is empty: pick a folder inside ComfyUI's input folder")
    if any(ord(ch) < 32 for ch in folder):
        raise ValueError(f"folder {folder!r} contains a control character; pick a folder inside ComfyUI's input "
                         "folder from the list")
    parts = folder.replace("\\", "/").split("/")
    if is_absolute(folder) or any(p in ("..", ".") for p in parts):
        raise ValueError(f"folder {folder!r} is not a folder inside ComfyUI's input folder ({root}); pick one "
                         "from the list")
    path = os.path.join(os.path.realpath(root), *[p for p in parts if p])
    if not inside(root, path):  # e.g. a symlink inside input pointing elsewhere
        raise ValueError(f"folder {folder!r} resolves to {os.path.realpath(path)}, outside ComfyUI's input folder "
                         f"{os.path.realpath(root)}; copy the images into the input folder instead of linking them")
    return os.path.realpath(path)


def safe_subfolder(root: str, folder: str, max_part: int = MAX_NAME) -> str:
    """``root/folder`` (ComfyUI's output folder) as an absolute path, refusing anything that is not a plain relative
    path inside root, or that Windows could not create. ``max_part``: the longest name of one folder allowed."""
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError("folder is empty: give a folder name inside ComfyUI's output folder, e.g. 'poison_set'")
    parts = folder.strip().replace("\\", "/").split("/")
    if len(folder.encode()) > 8 * MAX_NAME:  # many short parts can still pass the system's path length limit
        raise ValueError(f"folder {folder[:40]!r}... is {len(folder)} characters long; use at most {8 * MAX_NAME}")
    if is_absolute(folder.strip()):
        raise ValueError(f"folder {folder!r} is an absolute path; give a folder inside ComfyUI's output folder")
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"folder {folder!r} climbs out of (or around in) ComfyUI's output folder; "
                         "'..' and '.' are not allowed")
    for p in parts:
        if p and not _NAME.match(p):
            raise ValueError(f"folder {folder!r}: part {p!r} may use only letters, digits, space, '_', '-', '.'")
        if len(p.encode()) > max_part:
            raise ValueError(f"folder {folder[:40]!r}...: a folder name may be at most {max_part} characters "
                             f"(got {len(p)}); choose a shorter one")
        problem = windows_problem(p) if p else None
        if problem:
            raise ValueError(f"folder {folder!r}: {problem}; choose another name")
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *[p for p in parts if p]))
    if not inside(base, path):  # e.g. a symlink inside output pointing elsewhere
        raise ValueError(f"folder {folder!r} resolves to {path}, outside ComfyUI's output folder {base}")
    return path


def plain_name(value: str, what: str) -> str:
    """A name part the user typed (concept, prefix): letters, digits, space, '_', '-', '.'; no path; at most
    MAX_NAME characters; one Windows can create (surrounding spaces are trimmed)."""
    value = (value or "").strip()
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} may use only letters, digits, space, '_', '-', '.' (no path separators)")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} {value[:40]!r}... is {len(value)} characters long; use at most {MAX_NAME}")
    problem = windows_problem(value)
    if problem:
        raise ValueError(f"{what}: {problem}; choose another name")
    return value


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
