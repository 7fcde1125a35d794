"""End to end, hostile input, third round (issue 39): each case through the real server (POST /prompt)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import ExecutionError, texts
from test_e2e_bad_input import glaze_graph, node
from test_e2e_hostile_round2 import VAE_APPROX, folder_of, png, texture


@pytest.fixture(autouse=True)
def clean_outputs(server):
    yield
    shutil.rmtree(os.path.join(server.output_dir, "r3_out"), ignore_errors=True)


def test_the_portfolio_report_names_every_image_its_own_report_warned_about(server):
    """Case 1: a photo, a white and a black picture → GlazePerturb → SaveCloakedFolder with the reports wired: the
    set's table and cloak_report.md carry the black picture's warning (the set report used to keep only the first
    report's first line)."""
    folder_of(server, "r3_mixed", {"a_good.png": png(texture(64, 96, 3)),
                                   "b_white.png": png(np.full((64, 96, 3), 255, np.uint8)),
                                   "c_black.png": png(np.zeros((64, 96, 3), np.uint8))})
    prompt = glaze_graph(server, image=("20", 0), style=("22", 0))
    prompt["20"] = node(server, "LoadArtworkFolder", folder="r3_mixed")
    prompt["22"] = node(server, "ImageInvert", image=["20", 0])
    prompt["21"] = node(server, "SaveCloakedFolder", images=["6", 0], names=["20", 1], folder="r3_out",
                        reports=["6", 2])
    for drop in ("1", "2", "7", "8"):
        prompt.pop(drop)
    entry = server.run(prompt)
    report = "\n".join(texts(entry)["21"])
    first = report.splitlines()[0]
    assert "WARNING" in first and "c_black.png" in first and "a_good.png" not in first, report
    row = next(line for line in report.splitlines() if line.startswith("| 3 |"))
    assert "NOT protected" in row or "weakly protected" in row, row
    with open(os.path.join(server.output_dir, "r3_out", "cloak_report.md")) as f:
        assert f.read().strip() == report.strip()


def test_a_decoder_of_another_latent_space_is_named_not_dropped(server):
    """Case 2: an encoder file beside a decoder of another latent space (4 channels against the encoder's 32): the
    error says both channel counts, where it used to cloak without the decoded objective and say nothing."""
    shared = os.environ.get("CLOAK_MODELS_DIR") or os.path.join(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), "shared", "models")
    encoder = os.path.join(shared, "taef2", "taef2_encoder.pth")
    taesd_decoder = os.path.join(VAE_APPROX, "taesd_decoder.safetensors")
    if not os.path.isfile(encoder):
        pytest.skip(f"TAEF2 weights not found at {encoder}")
    shutil.copy(encoder, os.path.join(VAE_APPROX, "r3mix_encoder.pth"))
    from safetensors.torch import load_file
    torch.save(load_file(taesd_decoder), os.path.join(VAE_APPROX, "r3mix_decoder.pth"))  # a TAESD decoder: 4 ch
    try:
        prompt = {"1": node(server, "LoadVAEEncoder", vae_name="none", precision="auto", weight=1.0,
                            tae_name="r3mix_encoder.pth")}
        prompt["2"] = node(server, "PreviewAny", source=["1", 0])
        with pytest.raises(ExecutionError) as err:
            server.run(prompt)
        message = str(err.value)
        assert "r3mix_decoder" in message and "4" in message and "32" in message, message
    finally:
        for name in ("r3mix_encoder.pth", "r3mix_decoder.pth"):
            os.remove(os.path.join(VAE_APPROX, name))


# every input added to a node after the node's first release: a saved workflow from before lacks it (issue 39, case 6)
ADDED_LATER = {
    "GlazePerturb": ("tile_size", "pass_precision", "decoded_objective"),
    "NightshadePoison": ("tile_size", "pass_precision"),
    "LoadVAEEncoder": ("tae_name",),
    "SampleMiniatureMimic": ("guidance",),
    "StyleMimicryScore": ("model_kind",),
    "RobustnessCheck": ("purify_steps", "purify_cfg", "purify_sampler", "purify_scheduler"),
}


def test_every_input_added_after_a_release_is_optional_in_the_schema(server):
    for node_id, names in ADDED_LATER.items():
        inputs = server.object_info[node_id]["input"]
        assert not set(names) & set(inputs["required"]), (node_id, sorted(set(names) & set(inputs["required"])))
        assert set(names) <= set(inputs.get("optional", {})), (node_id, names)


@pytest.mark.parametrize("name", sorted(os.path.splitext(f)[0] for f in os.listdir(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")) if f.endswith(".json")))
def test_a_shipped_workflow_without_its_later_inputs_is_accepted(server, tiny_checkpoint, name):
    """Each shipped workflow in API form with every input added since its nodes' first release removed: ComfyUI
    accepts it (validation runs when it is queued); it is then taken off the queue unrun."""
    import json
    from comfy_server import ValidationError, ui_to_api
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for sample in ("coffee.png", "coffee_style.png"):
        shutil.copy(os.path.join(root, "samples", sample), server.input_dir)
    shutil.copytree(os.path.join(root, "samples", "portfolio"), os.path.join(server.input_dir, "cloak_portfolio"),
                    dirs_exist_ok=True)
    with open(os.path.join(root, "workflows", f"{name}.json"), encoding="utf-8") as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    removed = []
    for key, n in prompt.items():
        for field in ADDED_LATER.get(n["class_type"], ()):
            if n["inputs"].pop(field, None) is not None:
                removed.append(f"{n['class_type']}.{field}")
    try:
        prompt_id = server.submit(prompt)
    except ValidationError as e:
        pytest.fail(f"{name} without {removed}: {e}")
    server._request("POST", "/queue", {"delete": [prompt_id]})
    server._request("POST", "/interrupt", {})
    import time
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # leave the server idle for the next test
        queue = server._request("GET", "/queue")
        if not queue.get("queue_running") and not queue.get("queue_pending"):
            break
        time.sleep(0.5)
