"""Hostile input, the families of issue 18's cases, in the real in-process host: every PIL image mode the
portfolio loader may meet, truncated and corrupt files, batch-count mismatches between two inputs, the boundary
values of every numeric input the pack's schema offers (both accepted), symlinks inside and out of input/."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

GREY = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.float64) / 250  # 0..1, every level


@pytest.fixture(scope="module")
def pn(comfy_host):
    from importlib import import_module
    return import_module(comfy_host.pack.__name__ + ".nodes.portfolio_nodes")


def write_mode(path, mode: str):
    """``GREY`` written in PIL ``mode`` (PNG, or TIFF-like modes through their own savers); returns the 0..1 grey a
    faithful loader must give (composited on white where transparent)."""
    if mode == "I;16":
        Image.fromarray((GREY * 65535).round().astype(np.uint16)).save(path)
        return GREY
    if mode == "I":
        Image.fromarray((GREY * 65535).round().astype(np.int32), "I").save(path, format="TIFF")
        return GREY
    if mode == "F":
        Image.fromarray(GREY.astype(np.float32), "F").save(path, format="TIFF")
        return GREY
    if mode == "1":
        bits = GREY > 0.5
        Image.fromarray(bits).save(path)
        return bits.astype(np.float64)
    grey8 = (GREY * 255).round().astype(np.uint8)
    img = Image.fromarray(grey8, "L")
    if mode == "P":
        img.convert("P").save(path)
        return grey8 / 255
    if mode == "LA":
        alpha = np.full_like(grey8, 255)
        alpha[:, :8] = 0  # transparent: white
        Image.merge("LA", (img, Image.fromarray(alpha))).save(path)
        out = grey8 / 255
        out[:, :8] = 1.0
        return out
    if mode == "CMYK":
        img.convert("RGB").convert("CMYK").save(path, format="JPEG", quality=100)
        return None  # lossy: checked for range and mean only
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "P", "LA", "CMYK", "1"])
def test_every_image_mode_loads_with_its_own_levels(pn, tmp_path, mode):
    path = str(tmp_path / ("x.tif" if mode in ("F", "I") else "x.png" if mode != "CMYK" else "x.jpg"))
    expected = write_mode(path, mode)
    image = pn.load_rgb(path)
    assert image.shape == (1, 48, 64, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    got = image[0, ..., 0].double().numpy()
    if expected is None:
        assert abs(got.mean() - GREY.mean()) < 0.03, got.mean()
    else:
        assert np.abs(got - expected).max() <= 1.01 / 255, (mode, np.abs(got - expected).max())


@pytest.mark.parametrize("damage", ["half_png", "half_jpeg", "empty", "noise"])
def test_truncated_or_corrupt_files_are_refused_by_name(pn, tmp_path, damage):
    rng = np.random.default_rng(0)
    pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / ("bad.jpg" if damage == "half_jpeg" else "bad.png")
    if damage in ("half_png", "half_jpeg"):
        Image.fromarray(pixels).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(rng.bytes(2000))
    with pytest.raises(ValueError, match="bad.(png|jpg): the file is truncated or corrupt"):
        pn.load_rgb(str(path))


def test_symlinks_inside_the_input_folder_are_followed_and_out_of_it_refused(pn, comfy_host, tmp_path):
    root = comfy_host.input_dir
    inner = os.path.join(root, "fam_links")
    os.makedirs(inner, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "fam_real.png"))
    link = os.path.join(inner, "inside.png")
    if not os.path.lexists(link):
        os.symlink(os.path.join(root, "fam_real.png"), link)
    assert pn.image_files(inner, root) == ["inside.png"]  # a link that stays inside input/ is fine
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "away.png")
    os.symlink(tmp_path / "away.png", os.path.join(inner, "away.png"))
    try:
        with pytest.raises(ValueError, match="away.png .*outside ComfyUI's input folder"):
            pn.image_files(inner, root)
    finally:
        os.remove(os.path.join(inner, "away.png"))


def test_batch_counts_of_two_inputs_must_agree(comfy_host, taesd_vae):
    nodes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    encoder = nodes["LoadVAEEncoder"].execute(vae=taesd_vae, vae_name="none", precision="auto", weight=1.0).args[0]
    style = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    target = nodes["StyleTargetLatents"].execute(encoder=encoder, style=style, mode="per_image").args[0]
    art = torch.rand(3, 40, 48, 3, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="2 style image.*3 artworks"):
        nodes["GlazePerturb"].execute(image=art, encoder=encoder, style_target=target, intensity="default",
                                      render_quality="faster", robustness="off", seed=0, custom_budget=8,
                                      budget="adaptive")
    with pytest.raises(ValueError, match="2 style image.*3 artworks"):
        nodes["RobustnessCheck"].execute(original=art, cloaked=art, encoder=encoder, target=target, attacks="none",
                                         seed=0)


# ------------------------------------------------------------------------------- boundary values of the schema
def numeric_inputs(node_class) -> list[tuple[str, float, float]]:
    """(name, min, max) of every Int/Float input of a node's V3 schema."""
    from comfy_api.latest import io
    out = []
    for inp in node_class.define_schema().inputs:
        if isinstance(inp, (io.Int.Input, io.Float.Input)) and inp.min is not None and inp.max is not None:
            out.append((inp.id, inp.min, inp.max))
    return out


def base_inputs(comfy_host, taesd_vae, node_id: str) -> dict:
    nodes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    encoder = nodes["LoadVAEEncoder"].execute(vae=taesd_vae, vae_name="none", precision="auto", weight=1.0).args[0]
    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(3))
    target = nodes["StyleTargetLatents"].execute(encoder=encoder, style=image.flip(2), mode="per_image").args[0]
    cloak = dict(intensity="custom", render_quality="faster", robustness="off", seed=0, custom_budget=8,
                 budget="adaptive")
    return {
        "GlazePerturb": dict(image=image, encoder=encoder, style_target=target, **cloak),
        "NightshadePoison": dict(image=image, encoder=encoder, anchor=image.flip(1), caption="a cow",
                                 objective="latent", **cloak),
        "RobustnessCheck": dict(original=image, cloaked=image.clamp(0.01, 0.99), encoder=encoder, target=target,
                                attacks="none, jpeg:90", seed=0),
        "LoadVAEEncoder": dict(vae=taesd_vae, vae_name="none", precision="auto", weight=1.0),
        "SavePoisonDataset": dict(images=[image], captions=["a cow"], folder=["fam_bounds"], repeats=[10],
                                  concept=["cow"], filename_prefix=["p"]),
    }[node_id]


BOUNDARY_NODES = ("GlazePerturb", "NightshadePoison", "RobustnessCheck", "LoadVAEEncoder", "SavePoisonDataset")


@pytest.fixture(scope="module")
def two_steps(comfy_host):
    import sys
    mp = pytest.MonkeyPatch()
    cloak = sys.modules[comfy_host.pack.__name__ + ".engine.cloak"]
    mp.setitem(cloak.RENDER_QUALITY, "faster", 2)
    mp.setitem(cloak.POISON_STEPS, "faster", 4)
    yield
    mp.undo()


@pytest.mark.parametrize("node_id", BOUNDARY_NODES)
def test_every_numeric_input_accepts_its_own_schema_minimum_and_maximum(comfy_host, taesd_vae, two_steps, node_id):
    node_class = comfy_host.nodes.NODE_CLASS_MAPPINGS[node_id]
    bounds = numeric_inputs(node_class)
    assert bounds, f"{node_id} declares no numeric input"
    inside = {"tile_size": (16, 48)}  # values the schema offers (step 16) below the smallest useful tile
    for name, low, high in bounds:
        for value in (low, high, *inside.get(name, ())):
            if name == "tile_size" and value == 0:
                continue  # 0 = automatic, the default every other case runs with
            kwargs = base_inputs(comfy_host, taesd_vae, node_id)
            kwargs[name] = [value] if node_id == "SavePoisonDataset" else value
            try:
                node_class.execute(**kwargs)
            except (ValueError, TypeError) as e:
                pytest.fail(f"{node_id}.{name} = {value} (offered by its schema: {low}..{high}) is refused: {e}")


def test_the_portfolio_size_limit_is_its_own_not_pillows_bomb_limit(pn, tmp_path, monkeypatch):
    """A picture over Pillow's decompression-bomb limit but under the portfolio's loads (a valid 196 MP painting was
    called "truncated or corrupt"); one over the portfolio's limit is refused naming its size, the limit and what to
    do. Both limits are lowered here so the pictures stay small."""
    from PIL import Image as PILImage
    path = str(tmp_path / "wide.png")
    Image.fromarray(np.zeros((64, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone refuses anything over 2000 px
    with pytest.raises(PILImage.DecompressionBombError):
        PILImage.open(path)
    assert pn.load_rgb(path).shape == (1, 64, 100, 3)
    assert PILImage.MAX_IMAGE_PIXELS == 1000  # restored for the rest of the process
    monkeypatch.setattr(pn, "MAX_PIXELS", 5000)
    with pytest.raises(pn.TooBig, match=r"wide.png: 100x64 \(0 MP\) is over the 0 MP .*downscale it"):
        pn.load_rgb(path)
