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
    "SaveCloakedFolder": ("notes",),
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


def score_graph(server, files: dict) -> dict:
    """artist / target / clean / cloaked images (LoadImage of ``files``: input name → writer) → StyleMimicryScore
    (the taesd encoder) → PreviewAny of its report."""
    for name, write in files.items():
        write(os.path.join(server.input_dir, name))
    names = list(files)
    prompt = {str(10 + i): node(server, "LoadImage", image=name) for i, name in enumerate(names)}
    prompt["3"] = node(server, "VAELoader", vae_name="taesd")
    prompt["4"] = node(server, "LoadVAEEncoder", vae=["3", 0], vae_name="none", precision="auto", weight=1.0)
    prompt["5"] = node(server, "StyleMimicryScore", encoder=["4", 0], artist=["10", 0], target=["11", 0],
                       clean_lora=["12", 0], cloaked_lora=["13", 0], tile=64)
    prompt["6"] = node(server, "PreviewAny", source=["5", 1])
    return prompt


def test_a_strip_given_to_the_style_score_is_refused_before_any_work(server):
    """Case 4: a 1x4096 PNG as cloaked_lora is refused naming its size (it used to take 6 GB of memory first; a
    1x16384 strip would have exhausted 24 GB)."""
    art, other = texture(96, 96, 1), texture(96, 96, 2)[..., ::-1].copy()
    prompt = score_graph(server, {"r3s_artist.png": png(art), "r3s_target.png": png((other // 2 + 100).astype(np.uint8)),
                                  "r3s_clean.png": png(art), "r3s_strip.png": png(texture(1, 4096, 3))})
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    message = str(err.value)
    assert "cloaked_lora" in message and "4096x1" in message and "8:1" in message, message


def test_a_target_one_level_from_the_artwork_gives_no_verdict(server):
    """Case 5: the target is the artist's picture with one level changed in one pixel: refused as the same style
    (distances used to come out at 73,739x the gap and the table still named a winner)."""
    art = texture(96, 96, 4)
    near = art.copy()
    near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
    prompt = score_graph(server, {"r3n_artist.png": png(art), "r3n_target.png": png(near),
                                  "r3n_clean.png": png(art), "r3n_cloaked.png": png(texture(96, 96, 5))})
    with pytest.raises(ExecutionError) as err:
        server.run(prompt)
    assert "same style statistics" in str(err.value), str(err.value)


def test_a_huge_wrong_weights_file_is_refused_from_its_header(server):
    """Case 12: a 2 GiB (sparse) .safetensors whose only key is ``foo`` is refused by its size before it is read (it
    used to be loaded in full, +5.6 GB); a small one with the same wrong key by its header's keys alone."""
    import json
    import struct

    def sparse(path, length):
        header = json.dumps({"foo": {"dtype": "F32", "shape": [length // 4], "data_offsets": [0, length]}}).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + length)

    for name, length in (("r3huge_encoder.safetensors", 2 * 2**30), ("r3foo_encoder.safetensors", 4096)):
        path = os.path.join(VAE_APPROX, name)
        sparse(path, length)
        try:
            prompt = {"1": node(server, "LoadVAEEncoder", vae_name="none", precision="auto", weight=1.0,
                                tae_name=name)}
            prompt["2"] = node(server, "PreviewAny", source=["1", 0])
            with pytest.raises(ExecutionError) as err:
                server.run(prompt)
        finally:
            os.remove(path)
        message = str(err.value)
        assert name in message, message
        if length > 2**20:
            assert "2,048 MiB" in message and "not a TAE" in message, message
        else:
            assert "not a TAESD-family file" in message and "foo" in message, message


def test_a_folder_trains_one_mimic_of_the_whole_portfolio(server):
    """Case 3: LoadArtworkFolder (3 images of different sizes) -> TrainMiniatureMimic trains one mimic of all of
    them (the list used to be mapped: three one-image mimics, three times the time)."""
    folder_of(server, "r3_set", {"a.png": png(texture(64, 64, 1)), "b.png": png(texture(96, 64, 2)),
                                 "c.png": png(texture(64, 128, 3))})
    prompt = {"1": node(server, "LoadArtworkFolder", folder="r3_set"),
              "2": node(server, "LoadVAEEncoder", vae_name="none", precision="auto", weight=1.0,
                        tae_name="taesd_encoder.safetensors"),
              "3": node(server, "TrainMiniatureMimic", images=["1", 0], encoder=["2", 0], steps=2, seed=0,
                        crop_size=32),
              "4": node(server, "PreviewAny", source=["3", 1])}
    reports = texts(server.run(prompt))["4"]
    assert len(reports) == 1, reports
    # crops of 32² at stride 16: 3x3 + 5x3 + 3x7 = 45 crops
    assert "45 crops of 32² from 3 image(s)" in reports[0], reports


def save_portfolio(server, folder: str, files: dict, notes_wired: bool = True) -> tuple[str, dict]:
    """``files`` in input/``folder`` -> LoadArtworkFolder -> SaveCloakedFolder (notes wired or not): the set's
    report and the saved files."""
    from test_e2e_hostile_round2 import saved_in
    folder_of(server, folder, files)
    prompt = {"1": node(server, "LoadArtworkFolder", folder=folder),
              "2": node(server, "SaveCloakedFolder", images=["1", 0], names=["1", 1], folder="r3_out",
                        **({"notes": ["1", 2]} if notes_wired else {}))}
    entry = server.run(prompt)
    return "\n".join(texts(entry)["2"]), saved_in(server, "r3_out")


def display_p3_icc() -> bytes:
    """A Display P3 ICC v2 display profile (matrix/TRC: P3 primaries adapted to D50 as in Apple's profile, gamma 2.2
    curves), written here because Pillow can only make sRGB, LAB and XYZ profiles and no P3 file is installed."""
    import struct

    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    name = b"Display P3 (test)"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(name) + 1) + name + b"\0" + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"cprt", b"text" + b"\0" * 4 + b"none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)), (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)),
            (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = 128 + 4 + len(table) + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def test_a_display_p3_picture_is_converted_to_srgb_and_said_so(server):
    """Case 7: a Display-P3-tagged PNG is converted to sRGB on load (it used to be saved untagged, so desaturated),
    and the report says so."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = 200, 40  # P3 (200, 40, 0) is about sRGB (218, 0, 0): redder, no green
    icc = display_p3_icc()
    report, saved = save_portfolio(server, "r3_p3", {
        "red_p3.png": lambda path: Image.fromarray(pixels).save(path, icc_profile=icc)})
    assert "red_p3.png: converted from its colour profile (Display P3 (test)) to sRGB" in report, report
    got = saved["red_p3.png"].mean(axis=(0, 1))
    assert got[0] > 210 and got[1] < 20, got


def test_every_file_pillow_reads_is_loaded_and_every_other_named(server):
    """Case 8: .png, .tif, .bmp, .gif, a PNG named .jpg and a text file: every picture is loaded and saved, the
    text file is named in the report's first line (it used to say "2 images saved" and name none of the three
    artworks it left out)."""
    def pil(fmt, seed):
        return lambda path: Image.fromarray(texture(64, 64, seed)).save(path, format=fmt)

    report, saved = save_portfolio(server, "r3_kinds", {
        "a.png": pil("PNG", 1), "b.tif": pil("TIFF", 2), "c.bmp": pil("BMP", 3), "d.gif": pil("GIF", 4),
        "e.jpg": pil("PNG", 5), "notes.txt": lambda path: open(path, "w").write("not a picture")})
    assert sorted(saved) == ["a.png", "b.png", "c.png", "d.png", "e.png"], sorted(saved)
    first = report.splitlines()[0]
    assert "WARNING" in first and "notes.txt" in first and "1 of 6" in first, report


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_animation_is_named_as_cut_to_its_first_frame(server, fmt):
    """Case 9: a 3-frame APNG or animated WebP: its first frame is loaded, and the report's first line says the other
    frames are not protected (it used to be saved as a still under the artwork's name with no note)."""
    frames = [Image.fromarray(texture(64, 64, s)) for s in range(3)]
    name = f"anim.{fmt.lower()}"
    report, saved = save_portfolio(server, "r3_anim", {
        name: lambda path: frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100,
                                          lossless=True)})
    assert list(saved) == ["anim.png"]
    first = report.splitlines()[0]
    assert "WARNING" in first and f"{name}: an animation of 3 frames" in first, report


def png_header_only(path: str, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` (RGB, 8 bits) and whose one IDAT is empty: what a loader sees
    before it decodes anything, without gigabytes on disk."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_picture_over_the_size_limit_is_named_with_its_size(server):
    """Case 10: a picture over the portfolio's limit (17,000² = 289 MP; the limit is 268 MP, so a valid 14,000² =
    196 MP picture, which Pillow's own 179 MP bomb limit used to call "truncated or corrupt", now loads) is left out,
    named with its size, the limit and what to do, and the good picture beside it is saved."""
    report, saved = save_portfolio(server, "r3_big", {"good.png": png(texture(64, 64, 1)),
                                                      "huge.png": lambda path: png_header_only(path, 17000, 17000)},
                                   notes_wired=False)
    assert list(saved) == ["good.png"], list(saved)
    first = report.splitlines()[0]
    assert "WARNING" in first and "huge.png: 17000x17000 (289 MP) is over the 268 MP" in first, report
    assert "downscale it" in first and "corrupt" not in report, report


def test_a_small_image_in_a_folder_is_left_out_by_name_and_the_rest_saved(server):
    """Case 11: a 16x16 icon among good pictures is named in the report's first line and the good ones are saved
    (the prompt used to fail with "image: 16x16 is smaller ...", naming no file and saving nothing)."""
    report, saved = save_portfolio(server, "r3_icon", {"a.png": png(texture(64, 64, 1)), "b.png": png(texture(80, 64, 2)),
                                                       "icon.png": png(texture(16, 16, 3))}, notes_wired=False)
    assert sorted(saved) == ["a.png", "b.png"], sorted(saved)
    first = report.splitlines()[0]
    assert "WARNING" in first and "icon.png: 16x16 is smaller than the 32 px" in first, report
