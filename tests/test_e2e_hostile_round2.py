"""End to end, hostile input, second round (issue 18): each case through the real server (POST /prompt), as a
careless or malicious user would send it: files placed in input/ and models/vae_approx, API prompts."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import ExecutionError, texts
from test_e2e_bad_input import glaze_graph, node, report_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_APPROX = os.path.join(ROOT, ".host", "ComfyUI", "models", "vae_approx")


@pytest.fixture(autouse=True)
def clean_outputs(server):
    """What these cases write goes again after each: other server tests count the files in the shared output."""
    yield
    for name in ("rt_poison", "rt_out"):
        shutil.rmtree(os.path.join(server.output_dir, name), ignore_errors=True)


def folder_of(server, name: str, files: dict) -> str:
    """A fresh folder ``name`` in the server's input folder holding ``files`` (name → writer(path))."""
    directory = os.path.join(server.input_dir, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for file, write in files.items():
        write(os.path.join(directory, file))
    return directory


def png(pixels: np.ndarray, mode: str | None = None):
    return lambda path: Image.fromarray(pixels, mode).save(path) if mode else Image.fromarray(pixels).save(path)


def texture(h=48, w=64, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def portfolio_graph(server, folder: str, out: str, cloak: bool = False):
    """LoadArtworkFolder → (GlazePerturb with the artwork itself as target) → SaveCloakedFolder."""
    prompt = glaze_graph(server, image=("20", 0), style=("20", 0))
    prompt["20"] = node(server, "LoadArtworkFolder", folder=folder)
    images = ["6", 0] if cloak else ["20", 0]
    prompt["21"] = node(server, "SaveCloakedFolder", images=images, names=["20", 1], folder=out)
    for drop in ("1", "2", "7", "8") + (() if cloak else ("3", "4", "5", "6")):
        prompt.pop(drop, None)
    return prompt


def saved_in(server, out: str) -> dict[str, np.ndarray]:
    directory = os.path.join(server.output_dir, out)
    result = {}
    for f in sorted(os.listdir(directory)):
        if f.endswith(".png"):
            with Image.open(os.path.join(directory, f)) as im:
                result[f] = np.asarray(im.convert("RGB"), dtype=np.float64)
    return result


def error_of(server, prompt) -> str:
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    return str(err.value)


# ------------------------------------------------------------------------------------------ silent problems
def test_a_16_bit_png_keeps_its_levels(server):
    grey = (np.random.default_rng(1).random((48, 64)) * 52000 + 1000).astype(np.uint16)  # mean ≈ 103/255 of 16 bits
    folder_of(server, "rt_16bit", {"deep.png": lambda p: Image.fromarray(grey).save(p)})
    with Image.open(os.path.join(server.input_dir, "rt_16bit", "deep.png")) as im:
        assert im.mode.startswith("I"), im.mode  # PIL reads it as a 16-bit grey, the case that came out white
    server.run(portfolio_graph(server, "rt_16bit", "rt_out/16bit"))
    (out,) = saved_in(server, "rt_out/16bit").values()
    expected = grey.astype(np.float64) / 65535 * 255
    assert abs(out.mean() - expected.mean()) < 1.0, (out.mean(), expected.mean())
    assert np.abs(out[..., 0] - expected).max() <= 1.0


def test_a_truncated_png_is_refused_naming_the_file(server):
    def truncated(path):
        Image.fromarray(texture(96, 96)).save(path)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])

    folder_of(server, "rt_truncated", {"good.png": png(texture()), "half.png": truncated})
    message = error_of(server, portfolio_graph(server, "rt_truncated", "rt_out/truncated"))
    assert "half.png" in message and "truncated or corrupt" in message, message
    assert not os.path.isdir(os.path.join(server.output_dir, "rt_out", "truncated")), "nothing may be saved"


def test_fewer_style_images_than_artworks_is_refused_in_per_image_mode(server):
    prompt = glaze_graph(server, image=("9", 0), style=("10", 0))
    prompt["9"] = node(server, "RepeatImageBatch", image=["1", 0], amount=3)
    prompt["10"] = node(server, "RepeatImageBatch", image=["2", 0], amount=2)
    message = error_of(server, prompt)
    assert "GlazePerturb" in message and "2 style" in message and "3 artworks" in message, message


def test_a_pure_white_image_is_named_in_the_first_line(server):
    prompt = glaze_graph(server, image=("9", 0))
    prompt["9"] = node(server, "EmptyImage", width=64, height=64, batch_size=1, color=0xFFFFFF)
    first = report_of(server.run(prompt)).splitlines()[0]
    assert first.startswith("WARNING") and "image 0" in first and "weak" in first, first


# ---------------------------------------------------------------------------------------------------- wrong
def test_custom_budget_at_the_schema_maximum_runs(server):
    info = server.object_info["GlazePerturb"]["input"]["required"]["custom_budget"][1]
    prompt = glaze_graph(server, intensity="custom", custom_budget=info["max"])
    report = report_of(server.run(prompt))
    assert "max change" in report, report


def poison_save_graph(server, folder="rt_poison", concept="cow", filename_prefix="poison"):
    shutil.copy(os.path.join(ROOT, "samples", "coffee.png"), server.input_dir)
    return {"1": node(server, "LoadImage", image="coffee.png"),
            "2": node(server, "PrimitiveString", value="a photo of a cow"),
            "3": node(server, "SavePoisonDataset", images=["1", 0], captions=["2", 0], folder=folder, repeats=10,
                      concept=concept, filename_prefix=filename_prefix)}


def test_a_concept_of_the_documented_maximum_length_is_saved(server):
    concept = "c" * 120
    server.run(poison_save_graph(server, concept=concept))
    assert os.path.isdir(os.path.join(server.output_dir, "rt_poison", f"10_{concept}"))


@pytest.mark.parametrize("name", ["rt odd_name (1)", "rt_ünïcode"])
def test_folders_the_dropdown_offers_are_loaded(server, name):
    folder_of(server, name, {"a.png": png(texture())})
    spec = server._request("GET", "/object_info/LoadArtworkFolder")["LoadArtworkFolder"]["input"]["required"]["folder"]
    choices = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert name in choices, choices  # the dropdown offers it ...
    server.run(portfolio_graph(server, name, "rt_out/dropdown"))  # ... and the node loads it


def test_input_folder_errors_name_the_input_folder(server, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(texture()).save(outside / "x.png")
    link = os.path.join(server.input_dir, "rt_linked_folder")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(outside, link)
    message = error_of(server, portfolio_graph(server, "rt_linked_folder", "rt_out/linked"))
    assert "input folder" in message and "output folder" not in message, message


def test_a_file_symlink_out_of_the_input_folder_is_refused_like_a_folder_one(server, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(texture()).save(secret)
    directory = folder_of(server, "rt_file_link", {"mine.png": png(texture())})
    os.symlink(secret, os.path.join(directory, "stolen.png"))
    message = error_of(server, portfolio_graph(server, "rt_file_link", "rt_out/file_link"))
    assert "stolen.png" in message and "outside ComfyUI's input folder" in message, message


@contextlib.contextmanager
def weights_file(name: str, write):
    path = os.path.join(VAE_APPROX, name)
    write(path)
    try:
        yield name
    finally:
        os.remove(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cloak_rt_pwned",))


@pytest.mark.parametrize("kind", ["truncated", "pickled_code", "wrong_keys", "integer", "nan"])
def test_bad_weight_files_name_the_file_and_never_advise_unsafe_loading(server, kind):
    real = os.path.join(VAE_APPROX, "taesd_encoder.safetensors")
    from safetensors.torch import load_file, save_file

    def write(path):
        sd = load_file(real)
        if kind == "truncated":
            torch.save(sd, path)
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 3])
        elif kind == "pickled_code":
            torch.save({"0.weight": _RunsCode()}, path)
        elif kind == "wrong_keys":
            torch.save({"model.diffusion.weight": torch.zeros(3)}, path)
        elif kind == "integer":
            torch.save({k: v.to(torch.int64) for k, v in sd.items()}, path)
        else:
            sd = dict(sd)
            first = next(iter(sd))
            sd[first] = sd[first].clone().fill_(float("nan"))
            torch.save(sd, path)

    with weights_file(f"rt_{kind}_encoder.pth", write) as name:
        prompt = {"1": node(server, "LoadVAEEncoder", vae_name="none", precision="auto", weight=1.0, tae_name=name)}
        prompt["2"] = node(server, "PreviewAny", source=["1", 0])
        message = error_of(server, prompt)
    assert name in message, message
    assert "weights_only" not in message and "_x_host" not in message and "custom_nodes" not in message, message
    if kind == "pickled_code":
        assert "refused for safety" in message, message
        assert not os.path.exists("/tmp/cloak_rt_pwned")
    if kind == "truncated":
        assert "truncated or corrupt" in message and "download it again" in message, message


def test_the_estimate_of_a_big_batch_counts_the_batch(server):
    prompt = glaze_graph(server, image=("9", 0))
    prompt["9"] = node(server, "ImageScale", image=["1", 0], upscale_method="nearest-exact", width=128, height=128,
                       crop="disabled")
    prompt["10"] = node(server, "RepeatImageBatch", image=["9", 0], amount=1024)
    prompt["6"]["inputs"]["image"] = ["10", 0]
    prompt["5"]["inputs"]["style"] = ["9", 0]  # one style image serves all
    prompt_id = server.submit(prompt)
    deadline, line = time.monotonic() + 300, None
    while line is None and time.monotonic() < deadline:
        line = next((ln for ln in server.log_tail(400).splitlines()
                     if "GlazePerturb: estimated peak memory" in ln and "1024 image(s)" in ln), None)
        time.sleep(0.5)
    server._request("POST", "/interrupt", {})
    with pytest.raises(ExecutionError):
        server.wait(prompt_id, timeout=300)
    assert line is not None, server.log_tail(40)
    peak = float(re.search(r"estimated peak memory ([\d.]+) GiB", line).group(1))
    batch = 1024 * 128 * 128 * 3 * 4 / 2**30  # the engine's float32 copy of the input batch alone
    assert peak >= 2 * batch, line  # at least the input copy and the cloaked copy


def test_portfolio_names_keep_the_source_extension_when_stems_collide(server):
    folder_of(server, "rt_collide", {"a.jpg": lambda p: Image.fromarray(texture(seed=1)).save(p, quality=95),
                                      "a.png": png(texture(seed=2)), "b.webp": lambda p: Image.fromarray(
                                          texture(seed=3)).save(p, lossless=True)})
    server.run(portfolio_graph(server, "rt_collide", "rt_out/collide"))
    assert sorted(saved_in(server, "rt_out/collide")) == ["a.png", "a_jpg.png", "b.png"]
    with Image.open(os.path.join(server.output_dir, "rt_out", "collide", "a.png")) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), texture(seed=2))  # a.png's own image, not a.jpg's


@pytest.mark.parametrize("field,value", [("concept", "CON"), ("concept", "cow. "), ("folder", "rt/aux"),
                                         ("folder", "rt/lpt1.txt"), ("filename_prefix", "nul")])
def test_names_windows_cannot_create_are_refused(server, field, value):
    message = error_of(server, poison_save_graph(server, **{field: value}))
    assert "Windows" in message and value.strip() in message, message


def test_windows_reserved_portfolio_folder_is_refused(server):
    folder_of(server, "rt_win", {"a.png": png(texture())})
    message = error_of(server, portfolio_graph(server, "rt_win", "rt_out/PRN"))
    assert "Windows" in message and "PRN" in message, message
