"""End to end: bad inputs submitted to the real ComfyUI server (POST /prompt) give the user a clear message,
keep alpha, and never send an image out unprotected without saying so (issue 12's table, one test per row)."""
from __future__ import annotations

import os
import re
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import ExecutionError, ValidationError, _input_kind, _ordered_specs, texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def node(server, class_type, **inputs):
    """An API-format node with every required widget the caller left out set to its default (so new inputs
    with defaults do not break these graphs)."""
    info = server.object_info[class_type]
    for name, spec, section in _ordered_specs(info):
        kind, opts = _input_kind(spec)
        if name in inputs or kind is None or section != "required":
            continue
        choices = spec[0] if isinstance(spec[0], list) else opts.get("options") or [None]
        default = opts.get("default", choices[0])
        if default is not None:
            inputs[name] = default
    return {"class_type": class_type, "inputs": inputs}


def glaze_graph(server, image=("1", 0), style=("2", 0), vae="taesd", **glaze):
    """coffee + style (LoadImage) → taesd LoadVAEEncoder → StyleTargetLatents → GlazePerturb → Save Image, report."""
    for name in ("coffee.png", "coffee_style.png"):
        shutil.copy(os.path.join(ROOT, "samples", name), server.input_dir)
    settings = dict(intensity="default", render_quality="faster", robustness="off", seed=0, custom_budget=8,
                    budget="adaptive")
    settings.update(glaze)
    return {
        "1": node(server, "LoadImage", image="coffee.png"),
        "2": node(server, "LoadImage", image="coffee_style.png"),
        "3": node(server, "VAELoader", vae_name=vae),
        "4": node(server, "LoadVAEEncoder", vae=["3", 0], vae_name="none", precision="auto", weight=1.0),
        "5": node(server, "StyleTargetLatents", encoder=["4", 0], style=list(style), mode="per_image"),
        "6": node(server, "GlazePerturb", image=list(image), encoder=["4", 0], style_target=["5", 0], **settings),
        "7": node(server, "SaveImage", images=["6", 0], filename_prefix="bad_input/cloaked"),
        "8": node(server, "PreviewAny", source=["6", 2]),
    }


def report_of(entry) -> str:
    return "\n".join(texts(entry)["8"])


def saved(server, entry) -> list[str]:
    return [p for p in server.output_files(entry) if p.startswith(server.output_dir)]


def test_nan_latent_style_is_refused_before_any_work(server):
    from safetensors.torch import save_file

    latent = torch.randn(1, 4, 32, 48)
    latent[0, 1, 3:9, 5:20] = float("nan")
    save_file({"latent_tensor": latent.contiguous(), "latent_format_version_0": torch.tensor([])},
              os.path.join(server.input_dir, "broken.latent"))
    prompt = glaze_graph(server, style=("9", 0))
    prompt["9"] = node(server, "LoadLatent", latent="broken.latent")
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    message = str(err.value)
    assert "StyleTargetLatents" in message and "NaN or infinite" in message, message
    assert "unprotected" in message and "style IMAGE" in message, message  # why, and what to do instead


def test_sd3_latent_for_a_four_channel_encoder_names_both_channel_counts(server):
    prompt = glaze_graph(server, style=("9", 0))
    prompt["9"] = node(server, "EmptySD3LatentImage", width=384, height=256, batch_size=1)
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    message = str(err.value)
    assert "StyleTargetLatents" in message, message
    assert "16-channel" in message and "4-channel" in message, message
    assert "Wire the style IMAGE" in message and "must match the size" not in message, message


def test_pixel_space_vae_is_not_an_encoder(server):
    prompt = glaze_graph(server, vae="pixel_space")
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    message = str(err.value)
    assert "LoadVAEEncoder" in message and "pixel_space" in message and "not an encoder" in message, message


def test_rgba_image_keeps_alpha_and_transparent_pixels(server):
    rng = np.random.default_rng(0)
    rgb = (rng.random((64, 64, 3)) * 255).astype(np.uint8)           # texture: room for a visible-area cloak
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :24] = 0                                                  # a transparent band with hidden colours
    alpha[:8, 24:] = 128                                               # and a half-transparent one
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(os.path.join(server.input_dir, "rgba.png"))
    prompt = glaze_graph(server, image=("10", 0))
    prompt["9"] = node(server, "LoadImage", image="rgba.png")
    prompt["10"] = node(server, "JoinImageWithAlpha", image=["9", 0], alpha=["9", 1])  # IMAGE [1, 64, 64, 4]
    entry = server.run(prompt)
    files = saved(server, entry)
    assert len(files) == 1, files
    with Image.open(files[0]) as im:
        assert im.mode == "RGBA", im.mode                               # Save Image wrote the alpha channel
        out = np.asarray(im, dtype=np.int16)
    assert (out[..., 3] == alpha).all()                                 # alpha passed through untouched
    transparent = alpha == 0
    assert (out[..., :3][transparent] == rgb[transparent]).all()       # hidden colours never changed
    assert np.abs(out[..., :3][~transparent] - rgb[~transparent]).max() > 0  # the visible part is cloaked
    report = report_of(entry)
    assert "alpha kept" in report and "estimated peak memory" in report, report
    assert "estimated peak memory" in server.log_tail(400)              # the estimate is in the log too


def test_4096_square_at_default_is_estimated_up_front_runs_in_tiles_and_cancel_stops_it(server):
    """A 4096² artwork is estimated before any work, the full-resolution visibility term's memory counted (a 4096²
    default cloak peaked at 8.6 GiB through TAEF2, 6.4 GiB of it HaarPSI's): where the memory allows it plans tiles,
    the cloak starts, and Cancel (POST /interrupt) stops it instead of leaving the user waiting an hour; where it
    does not, the node refuses before any work, saying what the picture needs and what fits."""
    prompt = glaze_graph(server, image=("9", 0), render_quality="default", robustness="on")
    prompt["9"] = node(server, "ImageScale", image=["1", 0], upscale_method="nearest-exact", width=4096,
                       height=4096, crop="disabled")
    prompt_id = server.submit(prompt)
    deadline, line, refused = time.monotonic() + 300, None, None
    while line is None and refused is None and time.monotonic() < deadline:
        line = next((ln for ln in server.log_tail(400).splitlines()
                     if "GlazePerturb: estimated peak memory" in ln and "16.78 MP" in ln), None)  # 4096² padded
        if line is None:
            try:
                server.wait(prompt_id, timeout=0.5)
            except ExecutionError as err:
                refused = str(err)
            except TimeoutError:  # not finished yet
                pass
    if refused is not None:  # a machine without the memory: refused up front, with the estimate and what fits
        assert "does not fit in memory" in refused and "fits here" in refused, refused
        peak = float(re.search(r"estimated peak memory ([\d.]+) GiB", refused).group(1))
        assert 8.0 < peak < 16.0, refused
        return
    assert line is not None, server.log_tail(40)
    tiles = int(re.search(r"in (\d+) tiles", line).group(1))
    peak = float(re.search(r"estimated peak memory ([\d.]+) GiB", line).group(1))
    assert tiles >= 16 and 8.0 < peak < 16.0, line  # the visibility term's ~440 B a pixel (9.6 GiB at 4096²) counted
    time.sleep(2)
    server._request("POST", "/interrupt", {})
    started = time.monotonic()
    with pytest.raises(ExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=300)
    assert time.monotonic() - started < 240


def test_every_bad_attack_is_named_once(server):
    prompt = glaze_graph(server)
    bad = "jpeg:abc\nblur:2\nwarp:3, vae:1\njpeg:abc"
    prompt["9"] = node(server, "RobustnessCheck", original=["1", 0], cloaked=["1", 0], encoder=["4", 0],
                       target=["5", 0], attacks=bad, seed=0)
    for drop in ("6", "7", "8"):  # only the check: its validation error is the one to read
        del prompt[drop]
    with pytest.raises(ValidationError) as err:
        server.run(prompt)
    message = str(err.value)
    # ComfyUI's answer: the prompt-level summary, then one line per node error (what the node shows in the UI)
    node_lines = [line for line in message.splitlines() if line.startswith("node 9 (RobustnessCheck)")]
    assert len(node_lines) == 1, message  # one error, not one per input of the node
    for token in ("'jpeg:abc'", "'warp:3'", "'vae:1'"):
        assert node_lines[0].count(token) == 1, (token, message)  # every bad token, named once
        assert message.count(token) == 2, (token, message)       # and once more in the summary: nowhere else
    assert "3 bad attack(s)" in node_lines[0] and "'blur:2'" not in message, message


def test_a_cloak_scaled_to_nothing_says_so_in_the_first_line_and_the_log(server):
    prompt = glaze_graph(server, image=("9", 0))
    prompt["9"] = node(server, "EmptyImage", width=64, height=64, batch_size=1, color=0)  # black: SSIM floor binds
    entry = server.run(prompt)
    first = report_of(entry).splitlines()[0]
    assert first.startswith("WARNING") and "NOT protected" in first and "image 0" in first, report_of(entry)
    assert "NOT protected" in server.log_tail(400)
