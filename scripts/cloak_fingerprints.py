"""Fingerprints of what the cloak nodes make, for checking that a refactor changed no output byte.

Runs every shipped workflow through the real ComfyUI server (the tests' quick widget values, plus a second pass
with robustness on, so the EOT path is covered too) and prints the SHA-256 of each saved PNG's pixels and of
the text outputs (reports) with their timings and the server's folder blanked out. Run it before and after a change and compare:

    .host/venv/bin/python scripts/cloak_fingerprints.py > before.json   # (on the old commit)
    .host/venv/bin/python scripts/cloak_fingerprints.py > after.json
    diff before.json after.json

Seeded and deterministic on one machine; figures differ between CPUs (rounding), so compare on one machine.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from comfy_server import ComfyServer, texts, ui_to_api  # noqa: E402
import make_tiny_checkpoint  # noqa: E402
from workflow_quick import quicken, write_small_artwork  # noqa: E402

CLOAK_NODES = ("GlazePerturb", "NightshadePoison")
# seconds in reports and estimates, and in RobustnessCheck's JSON
TIMING = re.compile(r"\d+(\.\d+)? s\b|\d+ min\b|\d+\.\d h\b|(?<=\"seconds\": )[0-9.e+-]+")


def pixel_hash(path: str) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im).tobytes() + str(im.mode).encode()).hexdigest()[:16]


def is_preview(path: str) -> bool:
    return os.path.basename(path).startswith("ComfyUI_temp_")


def run(server, name: str, robustness: str, extra: dict | None = None) -> dict:
    """One workflow with the quick values; ``robustness`` and ``extra`` (input -> value) set on its cloak nodes.
    With a ``tile_size`` in ``extra`` the artwork stays full size (384x256), so the tiled path runs."""
    extra = extra or {}
    with open(os.path.join(ROOT, "workflows", f"{name}.json"), encoding="utf-8") as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    full_size = {k for k, n in prompt.items() if n["inputs"].get("image") == "coffee.png"} if "tile_size" in extra else set()
    prompt = quicken(prompt, server.object_info)
    for node_id, node in prompt.items():
        if node_id in full_size:
            node["inputs"]["image"] = "coffee.png"
        if node["class_type"] in CLOAK_NODES:
            node["inputs"]["robustness"] = robustness
            node["inputs"].update(extra)
        if node["class_type"] == "TrainLoraNode":
            node["inputs"]["steps"] = 1
    entry = server.run(prompt)
    files = sorted(server.output_files(entry))
    pngs = [p for p in files if p.lower().endswith(".png")]
    out = {os.path.basename(p): pixel_hash(p) for p in pngs if not is_preview(p)}
    out["previews"] = sorted(pixel_hash(p) for p in pngs if is_preview(p))  # random names: compared as a set
    for node_id, lines in sorted(texts(entry).items()):
        out[f"text:{node_id}"] = TIMING.sub("T", "\n".join(lines)).replace(server.workdir, "<workdir>")
    return out


def main() -> None:
    make_tiny_checkpoint.ensure()
    names = [os.path.splitext(os.path.basename(p))[0] for p in sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))]
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else names  # e.g. glaze_basic,nightshade_poison
    result = {}
    with ComfyServer() as server:
        write_small_artwork(server.input_dir)
        for robustness in ("off", "on"):
            for name in only:
                result[f"{name}/{robustness}"] = run(server, name, robustness)
                print(f"{name}/{robustness}: {len(result[f'{name}/{robustness}'])} fingerprints", file=sys.stderr)
        for name, extra in (("glaze_basic", {"tile_size": 128}), ("nightshade_poison", {"tile_size": 128}),
                            ("robustness_report", {"tile_size": 128}), ("nightshade_poison", {"objective": "noise"})):
            if name not in only:
                continue
            key = f"{name}/" + ",".join(f"{k}={v}" for k, v in extra.items())
            result[key] = run(server, name, "on", extra)
            print(f"{key}: {len(result[key])} fingerprints", file=sys.stderr)
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
