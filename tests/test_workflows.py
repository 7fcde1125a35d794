"""The shipped workflows' static checks (every node id and widget value exists on the real server, no node
overlaps another) and the portfolio and scoring nodes in-process. The workflows themselves run end to end in
tests/test_browser.py, queued from ComfyUI's front end.
"""
from __future__ import annotations

import glob
import json
import os
import pytest

from comfy_server import widget_slots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SHARED_TAE_FILES = {"taef2_encoder.pth", "taesana_encoder.pth"}  # setup_host.sh links them from shared/models


def load(name: str) -> dict:
    with open(os.path.join(ROOT, "workflows", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def boxes(workflow: dict) -> list[tuple[int, float, float, float, float]]:
    """(id, x0, y0, x1, y1) of each node including its 30 px title bar above pos."""
    return [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in workflow["nodes"]]


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_nodes_do_not_overlap(path):
    with open(path, encoding="utf-8") as f:
        b = boxes(json.load(f))
    overlaps = [(p[0], q[0]) for i, p in enumerate(b) for q in b[i + 1:]
                if p[1] < q[3] and q[1] < p[3] and p[2] < q[4] and q[2] < p[4]]
    assert not overlaps, f"{os.path.basename(path)}: nodes overlap: {overlaps}"


def test_every_workflow_node_and_widget_value_exists_on_the_server(server, tiny_checkpoint):
    info = server._request("GET", "/object_info")  # fresh: the checkpoint list includes the tiny model
    problems = []
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
        for node in workflow["nodes"]:
            where = f"{os.path.basename(path)} node {node['id']} ({node['type']})"
            if node["type"] in FRONTEND_ONLY:
                continue
            spec = info.get(node["type"])
            if spec is None:
                problems.append(f"{where}: not on the server")
                continue
            declared = {**(spec["input"].get("required") or {}), **(spec["input"].get("optional") or {})}
            for slot in node.get("inputs") or []:
                if slot["name"] not in declared:
                    problems.append(f"{where}: input {slot['name']!r} is not declared")
            values = node.get("widgets_values") or []
            for (name, role), value in zip(widget_slots(spec), values):
                if role != "value":
                    continue
                kind = declared[name][0]
                choices = kind if isinstance(kind, list) else (declared[name][1] or {}).get("options")
                optional_file = name == "tae_name" and value in SHARED_TAE_FILES  # linked only when present
                if choices is not None and value not in choices and node.get("mode", 0) == 0 and not optional_file:
                    problems.append(f"{where}: {name} = {value!r} is not one of the server's choices")
            if len(values) > len(widget_slots(spec)):
                problems.append(f"{where}: {len(values)} widget values for {len(widget_slots(spec))} widgets")
    assert not problems, "\n".join(problems)


def test_save_cloaked_folder_keeps_names_never_overwrites_and_gathers_reports(comfy_host):
    import torch
    import folder_paths
    from importlib import import_module

    nodes = import_module(comfy_host.pack.__name__ + ".nodes.portfolio_nodes")
    images = [torch.full((1, 8, 12, 3), 0.25), torch.full((2, 16, 8, 3), 0.75)]
    names = ["cup.png", "../evil name?.jpg", "beans.webp"]
    reports = ["GlazePerturb | x\nimage 0: PSNR 35.00 dB", "GlazePerturb | x\nimage 0: PSNR 36.00 dB\nimage 1: PSNR 37.00 dB"]
    folder = os.path.join(folder_paths.get_output_directory(), "cloak_test_set")
    with pytest.raises(ValueError, match="2 reports for 3 images"):
        nodes.SaveCloakedFolder.execute(images, names, ["cloak_test_set"], reports)
    out = nodes.SaveCloakedFolder.execute(images, names, ["cloak_test_set"], reports[:1] * 3)
    again = nodes.SaveCloakedFolder.execute(images, names, ["cloak_test_set"])
    assert sorted(os.listdir(folder)) == sorted(["cup.png", "evil name_.png", "beans.png", "cup_1.png",
                                                 "evil name__1.png", "beans_1.png", "cloak_report.md",
                                                 "cloak_report_1.md"])
    report = out.args[0]
    assert "| 1 | cup.png | cup.png | PSNR 35.00 dB |" in report and "GlazePerturb | x" in report
    assert "| 3 | beans.webp | beans_1.png |" in again.args[0]
    assert [i["filename"] for i in out.ui.as_dict()["images"]] == ["cup.png", "evil name_.png", "beans.png"]
    warned = ["WARNING: 1 of 1 image(s) NOT protected: image 0: its latent barely moved\n\nGlazePerturb | x\n\n"
              "estimated peak memory 0.01 GiB\n\nimage 0: PSNR 60.00 dB, target gain 0.000"]
    both = nodes.SaveCloakedFolder.execute(images, names, ["cloak_test_set"], reports[:1] * 2 + warned).args[0]
    assert both.splitlines()[0].startswith("**WARNING: 1 of 3 image(s) came with a warning") and "beans.webp" in \
        both.splitlines()[0], both  # the set report's first line names the image its own report warned about
    row = next(line for line in both.splitlines() if line.startswith("| 3 |"))
    assert "WARNING: 1 of 1 image(s) NOT protected" in row and "target gain 0.000" in row, row
    assert "estimated peak memory" not in row and "GlazePerturb | x" in both
    with pytest.raises(ValueError, match="2 names for 3 images"):
        nodes.SaveCloakedFolder.execute(images, names[:2], ["cloak_test_set"])
    with pytest.raises(ValueError, match="climbs out"):
        nodes.SaveCloakedFolder.execute(images, names, ["../x"])


def test_load_artwork_folder_lists_images_by_name_and_names_an_empty_folder(comfy_host, tmp_path):
    import folder_paths
    from importlib import import_module

    nodes = import_module(comfy_host.pack.__name__ + ".nodes.portfolio_nodes")
    samples = import_module(comfy_host.pack.__name__ + ".nodes.sample_files")
    # loading the pack put the samples into ComfyUI's input folder; a fresh folder gets them once, never overwritten
    assert os.path.isfile(os.path.join(folder_paths.get_input_directory(), "coffee.png"))
    (tmp_path / "coffee.png").write_bytes(b"the user's own file")
    written = samples.install_samples(str(tmp_path))
    assert samples.install_samples(str(tmp_path)) == []
    assert (tmp_path / "coffee.png").read_bytes() == b"the user's own file"
    assert any(p.endswith(os.path.join("cloak_portfolio", "coffee_cup.png")) for p in written)
    out = nodes.LoadArtworkFolder.execute("cloak_portfolio")
    images, names, notes = out.args
    assert names == ["coffee_beans.png", "coffee_cup.png", "coffee_table.png"] and notes == ""
    assert [tuple(i.shape) for i in images] == [(1, 96, 128, 3), (1, 128, 128, 3), (1, 128, 152, 3)]
    os.makedirs(os.path.join(folder_paths.get_input_directory(), "empty_set"), exist_ok=True)
    with pytest.raises(ValueError, match="'empty_set' holds no"):
        nodes.LoadArtworkFolder.execute("empty_set")


def test_style_mimicry_score_places_sets_between_artist_and_target(comfy_host, taesd_vae):
    import torch
    from importlib import import_module

    pack = comfy_host.pack.__name__
    scoring = import_module(pack + ".nodes.scoring_nodes")
    adapters = import_module(pack + ".nodes.comfy_adapters")
    engine = import_module(pack + ".engine")
    from conftest import load_image

    artist, target = load_image("coffee.png")[:, :64, :96], load_image("coffee_style.png")[:, :64, :96]
    mix = 0.7 * target + 0.3 * artist
    encoder = engine.EncoderEnsemble([adapters.vae_encoder(taesd_vae)])
    out = scoring.StyleMimicryScore.execute([encoder], [artist], [target], [artist * 0.9 + 0.1 * target], [mix],
                                            [64])
    grid, report, scores_json = out.args
    scores = json.loads(scores_json)
    for measure in ("pixel", "latent"):  # the set mixed toward the target lands nearer the target
        assert scores["cloaked_lora"][measure]["target_share"] > scores["clean_lora"][measure]["target_share"]
        assert scores["verdict"][measure] == "cloaked_lora"
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and "| LoRA | measure |" in report
    with pytest.raises(ValueError, match="same style statistics"):
        scoring.StyleMimicryScore.execute([encoder], [artist], [artist], [artist], [mix], [64])


def test_every_pack_output_and_input_has_a_tooltip(server):
    info = server.object_info
    ours = [k for k, v in info.items() if v.get("python_module", "").endswith("ComfyUI-Cloak")]
    assert {"GlazePerturb", "StyleMimicryScore", "LoadArtworkFolder", "SaveCloakedFolder"} <= set(ours)
    missing = []
    for node_id in ours:
        spec = info[node_id]
        for i, name in enumerate(spec.get("output_name") or []):
            if not ((spec.get("output_tooltips") or [None] * (i + 1))[i] or "").strip():
                missing.append(f"{node_id} output {name}")
        for section in ("required", "optional"):
            for name, s in (spec["input"].get(section) or {}).items():
                if not (len(s) > 1 and isinstance(s[1], dict) and s[1].get("tooltip")):
                    missing.append(f"{node_id} input {name}")
    assert not missing, "no tooltip: " + ", ".join(missing)
