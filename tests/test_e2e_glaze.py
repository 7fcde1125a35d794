"""End to end: the real ComfyUI server runs workflows/glaze_basic.json as a user would submit it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from comfy_server import ExecutionError, texts, ui_to_api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def glaze_prompt(server, **widgets):
    for name in ("coffee.png", "coffee_style.png"):
        shutil.copy(os.path.join(ROOT, "samples", name), server.input_dir)
    with open(os.path.join(ROOT, "workflows", "glaze_basic.json")) as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    glaze = next(n for n in prompt.values() if n["class_type"] == "GlazePerturb")
    glaze["inputs"].update(widgets)
    return prompt


def test_glaze_workflow_writes_a_cloaked_png_within_budget(server):
    prompt = glaze_prompt(server, render_quality="faster")
    entry = server.run(prompt)
    files = [p for p in server.output_files(entry) if p.startswith(server.output_dir)]
    assert len(files) == 1 and os.path.isfile(files[0]), files
    original = np.asarray(Image.open(os.path.join(ROOT, "samples", "coffee.png")).convert("RGB"), dtype=np.int16)
    cloaked = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.int16)
    assert cloaked.shape == original.shape
    change = np.abs(cloaked - original)
    assert 0 < change.max() <= 20  # default intensity: at most 20/255 per pixel, in the saved file
    mse = ((cloaked - original) / 255.0) ** 2
    assert 10 * np.log10(1 / mse.mean()) >= 34.99  # and its PSNR floor of 35 dB holds on the 8-bit file
    report = "\n".join(sum(texts(entry).values(), []))
    assert "GlazePerturb" in report and "target gain" in report
    # what a person sees of it, measured on the saved file itself (piq's HaarPSI and GMSD on the 8-bit images)
    import re
    import torch
    from piq import gmsd, haarpsi
    a, b = (torch.from_numpy(v.astype(np.float32) / 255).permute(2, 0, 1)[None] for v in (original, cloaked))
    seen = re.search(r"HaarPSI (\d\.\d{3}), GMSD (\d\.\d{4})", report)
    assert seen, report
    assert float(seen.group(1)) == pytest.approx(float(haarpsi(b, a, data_range=1.0)), abs=2e-3)
    assert float(seen.group(2)) == pytest.approx(float(gmsd(b, a, data_range=1.0)), abs=2e-4)
    assert 0.5 < float(seen.group(1)) < 1.0


def test_bad_input_comes_back_through_comfyui_error_path(server):
    prompt = glaze_prompt(server, render_quality="faster")
    load = next(k for k, n in prompt.items() if n["class_type"] == "LoadImage"
                and n["inputs"]["image"] == "coffee.png")
    glaze = next(n for n in prompt.values() if n["class_type"] == "GlazePerturb")
    prompt["99"] = {"class_type": "ImageScale",
                    "inputs": {"image": [load, 0], "upscale_method": "bilinear", "width": 24, "height": 16,
                               "crop": "disabled"}}
    glaze["inputs"]["image"] = ["99", 0]
    with pytest.raises(ExecutionError, match="smaller than this encoder can take"):
        server.run(prompt)
