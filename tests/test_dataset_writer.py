"""SavePoisonDataset inside a real ComfyUI process: layout, never overwriting, refusing paths out of output/,
and its outputs read by ComfyUI's own dataset nodes (Load Image and Text Dataset, Make Training Dataset)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def writer(comfy_host):
    return comfy_host.nodes.NODE_CLASS_MAPPINGS["SavePoisonDataset"]


def images(count=2, h=24, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand(count, h, w, 3, generator=g) * 255) / 255


def save(writer, batches, captions, folder, repeats=10, concept="cow", prefix="poison"):
    with torch.inference_mode():  # as ComfyUI executes nodes; is_input_list: every input arrives as a list
        return writer.execute(list(batches), list(captions), [folder], [repeats], [concept], [prefix])


def files(directory):
    return sorted(os.listdir(directory))


def test_writes_png_caption_pairs_in_the_kohya_layout(writer, comfy_host):
    batch = images(2)
    out = save(writer, [batch], ["a photo of a cow", "a cow in a field"], "sets/layout")
    directory = os.path.join(comfy_host.output_dir, "sets", "layout", "10_cow")
    assert out.args[2] == os.path.realpath(directory)
    assert files(directory) == ["poison_00001.png", "poison_00001.txt", "poison_00002.png", "poison_00002.txt"]
    for i in range(2):
        saved = np.asarray(Image.open(os.path.join(directory, f"poison_0000{i + 1}.png")), dtype=np.float32) / 255
        assert np.array_equal(saved, batch[i].numpy())  # lossless, on 8-bit levels
    with open(os.path.join(directory, "poison_00002.txt"), encoding="utf-8") as f:
        assert f.read() == "a cow in a field\n"
    singles, texts = out.args[0], out.args[1]
    assert [tuple(s.shape) for s in singles] == [(1, 24, 40, 3)] * 2 and texts == ["a photo of a cow", "a cow in a field"]
    assert "2 image/caption pairs" in out.ui.as_dict()["text"][0]


def test_one_caption_for_all_and_flat_layout(writer, comfy_host):
    save(writer, [images(1), images(2, seed=1)], ["a cow"], "sets/flat", repeats=0)
    directory = os.path.join(comfy_host.output_dir, "sets", "flat")
    assert len(files(directory)) == 6
    for name in files(directory):
        if name.endswith(".txt"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                assert f.read() == "a cow\n"
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        save(writer, [images(3)], ["a", "b"], "sets/flat")


def test_never_overwrites_an_existing_file(writer, comfy_host):
    directory = os.path.join(comfy_host.output_dir, "sets", "keep", "10_cow")
    os.makedirs(directory)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(os.path.join(directory, "poison_00001.png"))
    with open(os.path.join(directory, "poison_00004.txt"), "w") as f:
        f.write("someone else's caption")
    before = {n: open(os.path.join(directory, n), "rb").read() for n in files(directory)}
    save(writer, [images(1)], ["first"], "sets/keep")
    save(writer, [images(1, seed=2)], ["second"], "sets/keep")
    after = files(directory)
    assert after == ["poison_00001.png", "poison_00004.txt", "poison_00005.png", "poison_00005.txt",
                     "poison_00006.png", "poison_00006.txt"]
    for name, content in before.items():
        assert open(os.path.join(directory, name), "rb").read() == content


@pytest.mark.parametrize("folder", ["../escape", "sets/../../escape", "..", "/tmp/escape", "~/escape",
                                    "C:/escape", "sets\\..\\..\\escape", "sets/./x", "", "sets/na<me"])
def test_refuses_paths_that_leave_the_output_folder(writer, comfy_host, folder):
    parent = os.path.dirname(comfy_host.output_dir)
    listing = sorted(os.listdir(parent))
    with pytest.raises(ValueError, match="folder"):
        save(writer, [images(1)], ["a cow"], folder)
    assert sorted(os.listdir(parent)) == listing and not os.path.exists("/tmp/escape")


def test_refuses_a_symlink_out_of_output_and_bad_names(writer, comfy_host, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(comfy_host.output_dir, "sneaky"))
    with pytest.raises(ValueError, match="outside ComfyUI's output folder"):
        save(writer, [images(1)], ["a cow"], "sneaky/set")
    assert list(outside.iterdir()) == []
    with pytest.raises(ValueError, match="concept"):
        save(writer, [images(1)], ["a cow"], "sets/names", concept="../cow")
    with pytest.raises(ValueError, match="filename_prefix"):
        save(writer, [images(1)], ["a cow"], "sets/names", prefix="a/b")


def test_comfyui_dataset_nodes_read_what_it_writes(writer, comfy_host, taesd_vae):
    m = comfy_host.nodes.NODE_CLASS_MAPPINGS
    batch = images(2, 32, 48)
    out = save(writer, [batch], ["cow one", "cow two"], "sets/roundtrip", repeats=3)
    # ComfyUI's own reader (kohya '<repeats>_<name>' folders) loads the pairs back from the input folder
    shutil.copytree(os.path.join(comfy_host.output_dir, "sets", "roundtrip"),
                    os.path.join(comfy_host.input_dir, "roundtrip"))
    with torch.inference_mode():
        loaded, captions = m["LoadImageTextDataSetFromFolder"].execute("roundtrip").args
    assert len(loaded) == 6 and sorted(captions) == ["cow one"] * 3 + ["cow two"] * 3
    assert any(torch.equal(t[0], batch[0]) for t in loaded)

    class TextEncoder:  # stands in for CLIP: Make Training Dataset only needs these two calls
        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            return [[torch.full((1, 1, 4), float(len(tokens))), {}]]

    with torch.inference_mode():  # the list outputs go straight into Make Training Dataset (→ Train LoRA)
        latents, conds = m["MakeTrainingDataset"].execute(out.args[0], [taesd_vae], [TextEncoder()],
                                                          out.args[1]).args
    assert len(latents) == 2 and tuple(latents[0]["samples"].shape) == (1, 4, 4, 6)
    assert [float(c[0][0][0, 0, 0]) for c in conds] == [7.0, 7.0]
