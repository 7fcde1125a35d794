"""Shared fixtures: ComfyUI in-process (node tests) and a real ComfyUI server (end-to-end tests).

The host is the unmodified ComfyUI 0.3.75 that `bash scripts/setup_host.sh` builds in `.host/`. It goes
first on sys.path and its `nodes.py` is imported here, before pytest can put the clone's root (whose `nodes/`
package would shadow it) ahead of it. CPU is forced before anything imports `comfy.model_management`
(set CLOAK_TEST_GPU=1 to let ComfyUI pick a GPU). Tests using the `server` fixture are marked `e2e`
and run last.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".host", "ComfyUI")
PACK_LINK = os.path.join(HOST, "custom_nodes", "ComfyUI-Cloak")  # where ComfyUI loads the pack from
SAMPLES = os.path.join(ROOT, "samples")
SETUP_HINT = "no ComfyUI host in .host/: run bash scripts/setup_host.sh"

sys.path.insert(0, os.path.join(ROOT, "scripts"))  # comfy_server, demo
if os.path.isfile(os.path.join(HOST, "main.py")):
    sys.path.insert(0, HOST)
    import comfy.cli_args

    comfy.cli_args.args.cpu = os.environ.get("CLOAK_TEST_GPU") != "1"
    comfy.cli_args.args.disable_api_nodes = True
    # main.py imports the `utils` package before `nodes`; nodes.py then puts comfy/ first on sys.path,
    # after which `utils` would resolve to comfy/utils.py and break comfy_extras/nodes_images.py.
    import utils.extra_config  # noqa: F401
    # ComfyUI's nodes.py, imported now, while the host leads sys.path: pytest later imports the pack's root
    # __init__.py as a package, and for a clone whose folder name is no identifier (ComfyUI-Cloak, tmp.Ab12Cd) it
    # puts the clone's root first on sys.path to do so; a later `import nodes` would then find the pack's nodes/
    import nodes as _comfy_nodes

    if os.path.dirname(os.path.abspath(_comfy_nodes.__file__)) != os.path.abspath(HOST):
        raise RuntimeError(f"`import nodes` found {_comfy_nodes.__file__}, not ComfyUI's nodes.py in {HOST}")


def _require_host() -> None:
    if not os.path.isfile(os.path.join(HOST, "main.py")) or not os.path.exists(PACK_LINK):
        pytest.fail(SETUP_HINT, pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test against a real ComfyUI server (runs last)")


def _uses_a_server(item) -> bool:
    return any(name == "server" or name.endswith("_server") for name in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_a_server(item):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_uses_a_server)  # stable: e2e last


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """ComfyUI in this process, node registry filled the way the server fills it.

    Returns a namespace: `nodes` (ComfyUI's nodes module), `pack` (our package as ComfyUI imported it),
    `node_ids` (the ids our pack registered), `input_dir`/`output_dir` (fresh folders set in folder_paths).
    """
    _require_host()
    import folder_paths

    dirs = tmp_path_factory.mktemp("comfy_inproc")
    for kind in ("input", "output", "temp"):
        os.makedirs(dirs / kind, exist_ok=True)
        getattr(folder_paths, f"set_{kind}_directory")(str(dirs / kind))
    import hook_breaker_ac10a0
    import nodes

    async def load_core():
        await nodes.init_public_apis()
        await nodes.init_builtin_extra_nodes()  # comfy_extras as the server loads them (audio: no torchaudio)

    capture = _Capture()  # load_custom_node only logs a failure; keep its words for the test report
    hook_breaker_ac10a0.save_functions()
    try:
        asyncio.run(load_core())
        core = set(nodes.NODE_CLASS_MAPPINGS)
        logging.getLogger().addHandler(capture)
        loaded = asyncio.run(nodes.load_custom_node(PACK_LINK, ignore=core, module_parent="custom_nodes"))
    finally:
        logging.getLogger().removeHandler(capture)
        hook_breaker_ac10a0.restore_functions()
    node_ids = sorted(set(nodes.NODE_CLASS_MAPPINGS) - core)
    if not loaded or not node_ids:
        pytest.fail("ComfyUI could not load the pack:\n" + "\n".join(capture.lines), pytrace=False)
    pack = sys.modules[PACK_LINK.replace(".", "_x_")]  # the module name load_custom_node gives a folder
    return types.SimpleNamespace(nodes=nodes, pack=pack, node_ids=node_ids,
                                 input_dir=str(dirs / "input"), output_dir=str(dirs / "output"))


@pytest.fixture(scope="session")
def taesd_vae(comfy_host):
    """The repo's TAESD autoencoder as ComfyUI's VAELoader loads it ("taesd")."""
    import folder_paths

    names = set(folder_paths.get_filename_list("vae_approx"))
    if not {"taesd_encoder.safetensors", "taesd_decoder.safetensors"} <= names:
        pytest.fail("TAESD weights missing from .host/ComfyUI/models/vae_approx (found: "
                    f"{sorted(names)}): they come from models/taesd/ via bash scripts/setup_host.sh", pytrace=False)
    return comfy_host.nodes.VAELoader().load_vae("taesd")[0]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real ComfyUI server (127.0.0.1, free port, own folders) for end-to-end tests."""
    _require_host()
    from comfy_server import ComfyServer

    with ComfyServer(workdir=str(tmp_path_factory.mktemp("comfy_server")),
                     cpu=os.environ.get("CLOAK_TEST_GPU") != "1") as running:
        yield running


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The small SD1.5-detected checkpoint (scripts/make_tiny_checkpoint.py) in the host's models/checkpoints,
    built on first use (random weights: it proves graphs run, not that cloaks protect). Returns its file name."""
    _require_host()
    import make_tiny_checkpoint

    return os.path.basename(make_tiny_checkpoint.ensure())


def load_image(name: str):
    """A PNG from samples/ as a ComfyUI IMAGE: float32 [1, H, W, 3] in [0, 1]."""
    import torch
    from PIL import Image

    with Image.open(os.path.join(SAMPLES, name)) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


@pytest.fixture(scope="session")
def sample_image():
    """The bundled artwork (samples/coffee.png, 384x256) as IMAGE [1, 256, 384, 3]."""
    return load_image("coffee.png")


@pytest.fixture(scope="session")
def style_image():
    """The bundled target-style image (samples/coffee_style.png) as IMAGE [1, 256, 384, 3]."""
    return load_image("coffee_style.png")
