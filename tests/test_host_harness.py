"""Tests of the test/demo harness itself: fixtures, ComfyServer, ui_to_api, error reporting, demo output."""
from __future__ import annotations

import copy
import json
import os

import pytest
from PIL import Image

import demo
from comfy_server import ExecutionError, ValidationError, WorkflowError, texts, ui_to_api, widget_slots

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")


def ui_node(node_id, type_, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    """A node as the ComfyUI frontend saves it; inputs/outputs are (name, type, link(s)) triples."""
    node = {"id": node_id, "type": type_, "mode": mode, "widgets_values": widgets,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs]}
    if title:
        node["title"] = title
    return node


def handwritten_workflow() -> dict:
    """LoadImage -> Reroute -> ImageScale (width from a PrimitiveNode) -> ImageAddNoise (seed + control)
    -> bypassed ImageInvert -> SaveImage, plus a Note and a muted SaveImage."""
    nodes = [
        ui_node(1, "LoadImage", ["coffee.png", "image"], outputs=[("IMAGE", "IMAGE", [1]), ("MASK", "MASK", None)]),
        ui_node(2, "Reroute", inputs=[("", "*", 1)], outputs=[("", "IMAGE", [2])]),
        ui_node(3, "ImageScale", ["bilinear", 64, 32, "disabled"],
                inputs=[("image", "IMAGE", 2), ("width", "INT", 5)], outputs=[("IMAGE", "IMAGE", [3, 7])]),
        ui_node(4, "ImageAddNoise", [1234, "fixed", 0.0], inputs=[("image", "IMAGE", 3)],
                outputs=[("IMAGE", "IMAGE", [4])], title="Noise (zero)"),
        ui_node(5, "ImageInvert", inputs=[("image", "IMAGE", 4)], outputs=[("IMAGE", "IMAGE", [6])], mode=4),
        ui_node(6, "SaveImage", ["harness/handwritten"], inputs=[("images", "IMAGE", 6)]),
        ui_node(7, "PrimitiveNode", [96, "fixed"], outputs=[("INT", "INT", [5])]),
        ui_node(8, "Note", ["a note is not sent to the server"]),
        ui_node(9, "SaveImage", ["harness/muted"], inputs=[("images", "IMAGE", 7)], mode=2),
    ]
    nodes[2]["inputs"][1]["widget"] = {"name": "width"}  # a widget converted to an input
    nodes[6]["outputs"][0]["widget"] = {"name": "width"}
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
             [4, 4, 0, 5, 0, "IMAGE"], [5, 7, 0, 3, 1, "INT"], [6, 5, 0, 6, 0, "IMAGE"], [7, 3, 0, 9, 0, "IMAGE"]]
    return {"last_node_id": 9, "last_link_id": 7, "nodes": nodes, "links": links, "version": 0.4}


EXPECTED = {
    "1": ("LoadImage", {"image": "coffee.png"}),
    "3": ("ImageScale", {"image": ["1", 0], "upscale_method": "bilinear", "width": 96, "height": 32,
                         "crop": "disabled"}),
    "4": ("ImageAddNoise", {"image": ["3", 0], "seed": 1234, "strength": 0.0}),
    "6": ("SaveImage", {"images": ["4", 0], "filename_prefix": "harness/handwritten"}),
}


def as_schema1(workflow: dict) -> dict:
    """The same graph with links as objects (workflow schema version 1)."""
    wf = copy.deepcopy(workflow)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    wf["links"], wf["version"] = [dict(zip(keys, link)) for link in wf["links"]], 1
    return wf


def test_sample_image_is_a_comfy_image(sample_image, style_image):
    for image in (sample_image, style_image):
        assert tuple(image.shape) == (1, 256, 384, 3) and str(image.dtype) == "torch.float32"
        assert 0.0 <= float(image.min()) < float(image.max()) <= 1.0


def test_comfy_host_registers_the_pack_in_process(comfy_host):
    declared = sorted(cls.GET_SCHEMA().node_id for cls in comfy_host.pack.nodes.NODES)
    assert comfy_host.node_ids == declared
    assert {"LoadVAEEncoder", "GlazePerturb"} <= set(comfy_host.nodes.NODE_CLASS_MAPPINGS)
    import comfy.model_management as mm
    assert mm.get_torch_device().type == "cpu" or os.environ.get("CLOAK_TEST_GPU") == "1"


def test_widget_slots_follow_the_frontend(server):
    info = server.object_info
    assert widget_slots(info["KSampler"])[:3] == [("seed", "value"), ("seed", "control"), ("steps", "value")]
    assert widget_slots(info["LoadImage"]) == [("image", "value"), ("upload", "upload")]
    assert widget_slots(info["SaveImage"]) == [("filename_prefix", "value")]  # images is a socket


@pytest.mark.parametrize("schema", ["0.4", "1"])
def test_ui_to_api_converts_a_handwritten_workflow(server, schema):
    workflow = handwritten_workflow() if schema == "0.4" else as_schema1(handwritten_workflow())
    prompt = ui_to_api(workflow, server.object_info)
    assert {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()} == EXPECTED
    assert prompt["4"]["_meta"]["title"] == "Noise (zero)"
    assert prompt["1"]["_meta"]["title"] == server.object_info["LoadImage"]["display_name"]


def test_ui_to_api_drops_links_from_muted_nodes(server):
    nodes = [ui_node(1, "EmptyImage", [8, 8, 1, 0], outputs=[("IMAGE", "IMAGE", [1])], mode=2),
             ui_node(2, "PreviewImage", inputs=[("images", "IMAGE", 1)])]
    prompt = ui_to_api({"nodes": nodes, "links": [[1, 1, 0, 2, 0, "IMAGE"]]}, server.object_info)
    assert prompt == {"2": {"inputs": {}, "class_type": "PreviewImage", "_meta": {"title": "Preview Image"}}}


def test_ui_to_api_names_what_is_wrong(server):
    seedless = {"nodes": [ui_node(1, "KSampler", [5, 20, 8.0, "euler", "normal", 1.0])], "links": []}
    with pytest.raises(WorkflowError, match="control_after_generate mode of 'seed'"):
        ui_to_api(seedless, server.object_info)
    with pytest.raises(WorkflowError, match="NoSuchNode"):
        ui_to_api({"nodes": [ui_node(1, "NoSuchNode", [])], "links": []}, server.object_info)


def test_server_runs_the_converted_workflow(server):
    Image.open(os.path.join(SAMPLES, "coffee.png")).save(os.path.join(server.input_dir, "coffee.png"))
    entry = server.run(ui_to_api(handwritten_workflow(), server.object_info), timeout=300)
    files = server.output_files(entry)
    assert [os.path.relpath(f, server.output_dir).split(os.sep)[0] for f in files] == ["harness"]
    with Image.open(files[0]) as im:
        assert im.size == (96, 32)


def test_server_runs_a_core_prompt(server):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1,
                                                           "color": 0xFF0000}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness/core"}}}
    (path,) = server.output_files(server.run(prompt, timeout=120))
    with Image.open(path) as im:
        assert im.size == (40, 24) and im.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_validation_error_carries_comfyui_message(server):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": -5, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(ValidationError) as err:
        server.submit(prompt)
    assert "Value -5 smaller than min of 1" in str(err.value) and "EmptyImage" in str(err.value)


def test_execution_error_carries_comfyui_message(server):
    with open(os.path.join(server.input_dir, "broken.png"), "wb") as f:
        f.write(b"this is not a PNG")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(ExecutionError) as err:
        server.run(prompt, timeout=120)
    assert "LoadImage" in str(err.value) and "cannot identify image file" in str(err.value)


def test_server_loads_the_pack(server, comfy_host):
    missing = [node_id for node_id in comfy_host.node_ids if node_id not in server.object_info]
    assert not missing, f"pack nodes missing on the server: {missing}\n{server.log_tail()}"


def test_demo_collects_images_and_report_without_overwriting(server, tmp_path):
    nodes = [ui_node(1, "LoadImage", ["x.png", "image"], outputs=[("IMAGE", "IMAGE", [1])], title="Artwork"),
             ui_node(2, "ImageInvert", inputs=[("image", "IMAGE", 1)], outputs=[("IMAGE", "IMAGE", [2])]),
             ui_node(3, "SaveImage", ["harness/demo"], inputs=[("images", "IMAGE", 2)], title="Cloaked"),
             ui_node(4, "LoadImage", ["y.png", "image"], outputs=[("IMAGE", "IMAGE", [3])], title="Target style"),
             ui_node(5, "PreviewImage", inputs=[("images", "IMAGE", 3)], title="Style preview"),
             ui_node(6, "PrimitiveStringMultiline", ["PSNR 40 dB"], outputs=[("STRING", "STRING", [4])]),
             ui_node(7, "PreviewAny", [], inputs=[("source", "*", 4)], title="Report")]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 4, 0, 5, 0, "IMAGE"], [4, 6, 0, 7, 0, "STRING"]]
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"nodes": nodes, "links": links}))
    out = tmp_path / "demo"
    image, style = os.path.join(SAMPLES, "coffee.png"), os.path.join(SAMPLES, "coffee_style.png")
    written, entry = demo.run_workflow(server, str(workflow), image, style, str(out), timeout=120)
    assert texts(entry) == {"7": ["PSNR 40 dB"]}
    assert sorted(os.path.basename(p) for p in written) == ["demo_1.png", "report_1.txt", "style_preview_1.png"]
    assert "PSNR 40 dB" in (out / "report_1.txt").read_text()
    with Image.open(out / "demo_1.png") as saved, Image.open(image) as original:
        inverted, pixel = saved.convert("RGB"), original.convert("RGB").getpixel((5, 5))
        assert saved.size == original.size and inverted.getpixel((5, 5)) == tuple(255 - c for c in pixel)
    written_again, _ = demo.run_workflow(server, str(workflow), image, style, str(out), timeout=120)
    assert sorted(os.path.basename(p) for p in written_again) == ["demo_2.png", "report_2.txt",
                                                                  "style_preview_2.png"]
