"""Quick settings for running the shipped workflows on a CPU in tests (the files keep real-use values).

Shared by the server tests (tests/test_workflows.py) and the browser tests (tests/test_browser.py), which
set the same values through the front end's widgets before queueing.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_ARTWORK = "coffee_small_test.png"  # 96x64 copy of samples/coffee.png, written into the input folder
NEW_WORKFLOWS = ("glaze_img2img_target", "glaze_portfolio", "lora_mimicry_test", "mimicry_miniature")

# class_type -> widget values; a LoadImage showing coffee.png gets SMALL_ARTWORK instead
QUICK = {
    "GlazePerturb": {"render_quality": "faster", "robustness": "off"},
    "NightshadePoison": {"render_quality": "faster", "robustness": "off"},
    "KSampler": {"steps": 3},
    "TrainLoraNode": {"steps": 2, "training_dtype": "fp32", "lora_dtype": "fp32", "gradient_checkpointing": False},
    "EmptyLatentImage": {"width": 64, "height": 64},
    "TrainMiniatureMimic": {"steps": 4, "crop_size": 32},
    "SampleMiniatureMimic": {"count": 2, "sampler_steps": 3},
}


def write_small_artwork(input_dir: str) -> str:
    with Image.open(os.path.join(ROOT, "samples", "coffee.png")) as im:
        small = im.convert("RGB").resize((96, 64), Image.LANCZOS)
    path = os.path.join(input_dir, SMALL_ARTWORK)
    small.save(path)
    return path


def quicken(prompt: dict, object_info: dict) -> dict:
    """Apply QUICK to an API prompt in place (only inputs the node type has); returns it."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("LoadImage",) and inputs.get("image") == "coffee.png":
            inputs["image"] = SMALL_ARTWORK
        spec = object_info.get(node["class_type"], {}).get("input", {})
        names = set(spec.get("required") or {}) | set(spec.get("optional") or {})
        for name, value in QUICK.get(node["class_type"], {}).items():
            if name in names and not isinstance(inputs.get(name), list):
                inputs[name] = value
    return prompt


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)
