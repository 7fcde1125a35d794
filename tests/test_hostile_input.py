"""Hostile input: property-based tests (hypothesis) that feed every node's ``execute``, inside the real in-process
ComfyUI host, with odd IMAGE/LATENT tensors (shapes, dtypes, channel counts, NaN/inf/negative/>1 values, batches
0-3, sides 1-300 px) and odd strings (unicode, separators, paths, very long) for every text input.

Every case must end in a result or in a ValueError/TypeError whose message names the input; never another
exception type, a hang, NaN in an output, or a file outside ComfyUI's output folder.

Bounded: derandomized (the same cases every run, so CI is stable), no example database, a fixed number of
examples per test, and the optimisation shortened to 2 steps (render quality "faster" is patched for this
module only: these tests are about inputs, not about how strong a cloak gets). On a failure hypothesis prints
the falsifying example and a ``@reproduce_failure`` blob. Count the generated cases with
``.host/venv/bin/python -m pytest -q tests/test_hostile_input.py --hypothesis-show-statistics``.
"""
from __future__ import annotations

import math
import os
import signal
import types
from contextlib import contextmanager

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -r requirements-dev.txt (hypothesis)")
import torch  # noqa: E402
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_SECONDS = 120  # one example longer than this counts as a hang


def bounded(examples: int):
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------------------------ strategies
DTYPES = [torch.float32, torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8,
          torch.int64, torch.bool]
FILLS = ["uniform", "uniform", "uniform", "texture", "zeros", "ones", "negative", "above_one", "nan", "inf",
         "neg_inf", "huge"]


def fill(shape, how: str, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if how == "texture" and len(shape) >= 2:
        t = torch.rand(shape, generator=g)
    elif how == "zeros":
        t = torch.zeros(shape)
    elif how == "ones":
        t = torch.ones(shape)
    elif how == "negative":
        t = -torch.rand(shape, generator=g)
    elif how == "above_one":
        t = 1 + 3 * torch.rand(shape, generator=g)
    elif how == "huge":
        t = torch.full(shape, 3e38)
    else:
        t = torch.rand(shape, generator=g)
    if how in ("nan", "inf", "neg_inf") and numel:
        flat = t.reshape(-1)
        idx = torch.randint(numel, (max(1, numel // 50),), generator=g)
        flat[idx] = {"nan": float("nan"), "inf": float("inf"), "neg_inf": float("-inf")}[how]
    return t.to(dtype)


SIDES = st.one_of(st.integers(1, 40), st.sampled_from([31, 32, 33, 40, 47, 48, 64, 65]), st.integers(1, 300))
SMALL_SIDES = st.one_of(st.sampled_from([32, 33, 40, 48]), st.integers(1, 64))


@st.composite
def images(draw, sides=SIDES, channels=st.sampled_from([3, 3, 3, 4, 4, 1, 2, 5]), batch=st.integers(0, 3)):
    """A ComfyUI IMAGE ``[B, H, W, C]`` of odd shape, dtype and values, now and then not an image at all."""
    kind = draw(st.sampled_from(["image"] * 12 + ["ndim3", "ndim2", "ndim5", "channels_first", "not_tensor"]))
    if kind == "not_tensor":
        return draw(st.sampled_from([None, "image.png", 3, 0.5, [1, 2, 3], {"samples": 1}]))
    b, h, w, c = draw(batch), draw(sides), draw(sides), draw(channels)
    shape = {"image": (b, h, w, c), "ndim3": (h, w, c), "ndim2": (h, w), "ndim5": (b, 2, h, w, c),
             "channels_first": (max(b, 1), 3, h, w)}[kind]
    big = math.prod(shape) > 3 * 300 * 300 * 3
    if big:
        shape = shape[:-3] + (min(shape[-3], 64),) + shape[-2:]
    return fill(shape, draw(st.sampled_from(FILLS)), draw(st.integers(0, 2**16)), draw(st.sampled_from(DTYPES)))


@st.composite
def latents(draw):
    """A ComfyUI LATENT (a dict with ``samples``) of odd shape, channels (SD 4, SD3/FLUX.1 16, FLUX.2 32) and values."""
    kind = draw(st.sampled_from(["latent"] * 10 + ["video", "flat", "no_samples", "samples_not_tensor"]))
    if kind == "no_samples":
        return {"noise_mask": torch.zeros(1, 1, 8, 8)}
    if kind == "samples_not_tensor":
        return {"samples": draw(st.sampled_from([None, "latent", [[1.0]], 4]))}
    b, c = draw(st.integers(0, 3)), draw(st.sampled_from([4, 4, 4, 16, 32, 1, 3]))
    h, w = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    shape = {"latent": (b, c, h, w), "video": (b, c, 2, h, w), "flat": (c, h)}[kind]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.int64]))
    return {"samples": fill(shape, draw(st.sampled_from(FILLS)), draw(st.integers(0, 2**16)), dtype)}


ODD_STRINGS = ["", " ", "\n\n", "..", "../escape", "a/../../b", "/etc/passwd", "C:\\Windows", "~/x", "\\\\server\\x",
               "a\x00b", "con", "nul", "x" * 300, "dir/sub", "dir//sub/", "x:y", "%s%n", "{0}", "😀", "ünïcödé",
               "名前", "a\u202eb", "\t", "#", ",,,", ";", "a" * 5000, ".", "./", "-", "_", "poison_set"]
TEXT = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=40),
                 st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=2000),
                 st.from_regex(r"[A-Za-z0-9 _.\-/\\:]{0,30}", fullmatch=True))


def mostly(valid, hostile, hostile_share: int = 1, valid_share: int = 2):
    """``valid`` values most of the time, so that the other inputs' hostile values reach the deep code paths."""
    return st.one_of(*([valid] * valid_share + [hostile] * hostile_share))


VALID_IMAGES = st.builds(lambda b, h, w, c, seed: torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed)),
                         st.integers(1, 2), st.integers(32, 48), st.integers(32, 48), st.sampled_from([3, 3, 4]),
                         st.integers(0, 2**16))


@st.composite
def attack_specs(draw):
    """Attack lists: mostly catalogue keys with odd values and separators, sometimes plain odd text."""
    from_catalogue = st.tuples(
        st.sampled_from(["none", "jpeg", "jpeg444", "webp", "resize", "blur", "noise", "crop", "rotate", "screenshot",
                         "vae", "impress", "diffpure", "noisy_upscale", "JPEG", "warp", ""]),
        st.one_of(st.just(""), st.sampled_from(["abc", "nan", "inf", "-1", "0", "1e9", "0.05", "1", "10", "45",
                                                "100", "0.3", " 2 ", "1:2", "💥"]),
                  st.floats(-100, 200).map(lambda v: f"{v:g}")))
    tokens = draw(st.lists(from_catalogue.map(lambda kv: f"{kv[0]}:{kv[1]}" if kv[1] else kv[0]), max_size=6))
    sep = draw(st.sampled_from([", ", "\n", ";", " , ", "\r\n", "\n# comment\n"]))
    return draw(st.one_of(st.just(sep.join(tokens)), TEXT))


# ------------------------------------------------------------------------------------------------ harness
@pytest.fixture(scope="module")
def h(comfy_host, taesd_vae):
    """The pack's node classes, a taesd encoder and a style target, with render quality 'faster' = 2 steps."""
    import sys

    import folder_paths

    mp = pytest.MonkeyPatch()
    cloak = sys.modules[comfy_host.pack.__name__ + ".engine.cloak"]
    mp.setitem(cloak.RENDER_QUALITY, "faster", 2)
    mp.setitem(cloak.POISON_STEPS, "faster", 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is 10x faster than two fighting a busy machine's cores
    nodes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    encoder = nodes["LoadVAEEncoder"].execute(vae=taesd_vae, vae_name="none", precision="auto", weight=1.0).args[0]
    style = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    target = nodes["StyleTargetLatents"].execute(encoder=encoder, style=style, mode="per_image").args[0]
    base = os.path.dirname(comfy_host.output_dir)
    yield Harness(nodes=nodes, encoder=encoder, target=target, style=style, vae=taesd_vae,
                  output_dir=comfy_host.output_dir, temp_dir=folder_paths.get_temp_directory(), base=base)
    mp.undo()
    torch.set_num_threads(threads)


class Harness(types.SimpleNamespace):
    def __repr__(self):  # hypothesis prints the arguments of a failing case: keep the fixture's part short
        return "h"


def _files(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@contextmanager
def _time_limit(seconds: int):
    def on_alarm(*_):
        raise TimeoutError(f"hang: one case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _finite(value, where="output"):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"NaN/inf in {where} {list(value.shape)}"
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")


def outcome(h, call, names):
    """Run one case: a result (checked for NaN) or a ValueError/TypeError naming one of ``names``; nothing else.
    Files may appear only inside ComfyUI's output folder. Returns the node output or the exception."""
    before = _files(h.base)
    top = set(os.listdir(ROOT)), set(os.listdir(os.path.dirname(h.base)))
    try:
        with _time_limit(CASE_SECONDS):
            out = call()
    except (ValueError, TypeError) as e:
        message = str(e)
        assert any(n.lower() in message.lower() for n in names), \
            f"{type(e).__name__} does not name the input (one of {names}): {message}"
        result = e
        event(f"refused: {type(e).__name__}")
    else:
        _finite(list(out.args), "output")
        result = out
        event("result")
    after = _files(h.base) - before
    allowed = [os.path.realpath(d) + os.sep for d in (h.output_dir, h.temp_dir)]  # temp: ComfyUI's own previews
    stray = [p for p in after if not any(os.path.realpath(p).startswith(a) for a in allowed)]
    assert not stray, f"files written outside the output folder: {stray}"
    assert (set(os.listdir(ROOT)), set(os.listdir(os.path.dirname(h.base)))) == top, "files appeared beside the host"
    return result


CLOAK_KNOBS = dict(
    intensity=st.sampled_from(["low", "default", "high", "custom", "custom", "medium"]),
    robustness=st.sampled_from(["off", "off", "on", "strong"]),
    budget=st.sampled_from(["adaptive", "adaptive", "adaptive", "linf", "lpips"]),
    custom_budget=mostly(st.integers(1, 64), st.sampled_from([0, -3, 65, 255]), 1, 3),
    seed=st.integers(0, 2**31 - 1),
)
CLOAK_NAMES = ["image", "custom_budget", "budget", "intensity", "style"]


# ------------------------------------------------------------------------------------------------ the nodes
@bounded(70)
@given(style=mostly(VALID_IMAGES, images(), 3, 1), mode=st.sampled_from(["per_image", "mean", "style_stats"]))
def test_style_target_latents_with_odd_images(h, style, mode):
    out = outcome(h, lambda: h.nodes["StyleTargetLatents"].execute(encoder=h.encoder, style=style, mode=mode),
                  ["style"])
    if not isinstance(out, Exception):
        t = out.args[0]
        assert all(torch.isfinite(z).all() for z in t.latents)


@bounded(80)
@given(style=latents(), mode=st.sampled_from(["per_image", "mean", "style_stats"]))
def test_style_target_latents_with_odd_latents(h, style, mode):
    outcome(h, lambda: h.nodes["StyleTargetLatents"].execute(encoder=h.encoder, style=style, mode=mode),
            ["style", "latent"])


@bounded(70)
@given(image=mostly(VALID_IMAGES, images(sides=SMALL_SIDES), 2, 1), **CLOAK_KNOBS)
def test_glaze_perturb_with_odd_images(h, image, intensity, robustness, budget, custom_budget, seed):
    out = outcome(h, lambda: h.nodes["GlazePerturb"].execute(
        image=image, encoder=h.encoder, style_target=h.target, intensity=intensity, render_quality="faster",
        robustness=robustness, seed=seed, custom_budget=custom_budget, budget=budget), CLOAK_NAMES)
    if not isinstance(out, Exception):
        cloaked, preview, report = out.args
        assert cloaked.shape == (image[None] if image.ndim == 3 else image).shape  # channels kept (RGBA too)
        assert preview.shape[-1] == 3 and isinstance(report, str)
        if image.shape[-1] == 4:
            src = image[None] if image.ndim == 3 else image
            assert torch.equal(cloaked[..., 3], src[..., 3].float())   # alpha untouched
            hidden = src[..., 3] == 0
            assert torch.equal(cloaked[..., :3][hidden], src[..., :3][hidden].float())  # transparent: unchanged
        from_report = [line for line in report.splitlines() if line.startswith("image ")]
        assert len(from_report) == cloaked.shape[0]


@bounded(40)
@given(image=mostly(VALID_IMAGES, images(sides=SMALL_SIDES, batch=st.integers(0, 2))),
       anchor=mostly(VALID_IMAGES, st.one_of(images(sides=SMALL_SIDES), latents())),
       caption=mostly(st.just("a photo of a cow"), TEXT), intensity=CLOAK_KNOBS["intensity"], seed=CLOAK_KNOBS["seed"])
def test_nightshade_poison_with_odd_images_anchors_and_captions(h, image, anchor, caption, intensity, seed):
    outcome(h, lambda: h.nodes["NightshadePoison"].execute(
        image=image, encoder=h.encoder, anchor=anchor, caption=caption, intensity=intensity,
        render_quality="faster", robustness="off", seed=seed, custom_budget=8, budget="adaptive",
        objective="latent"), CLOAK_NAMES + ["anchor", "caption"])


@bounded(40)
@given(caption=TEXT, batch=st.integers(1, 3))
def test_nightshade_poison_with_odd_captions(h, caption, batch):
    image = torch.rand(batch, 32, 32, 3, generator=torch.Generator().manual_seed(batch))
    out = outcome(h, lambda: h.nodes["NightshadePoison"].execute(
        image=image, encoder=h.encoder, anchor=h.style, caption=caption, intensity="default",
        render_quality="faster", robustness="off", seed=0, custom_budget=8, budget="adaptive",
        objective="latent"), ["caption"])
    if not isinstance(out, Exception):
        assert len(out.args[1]) == batch and all(isinstance(c, str) and c for c in out.args[1])


@bounded(150)
@given(attacks=attack_specs())
def test_robustness_check_validates_any_attack_text(h, attacks):
    check = h.nodes["RobustnessCheck"]
    verdict = check.validate_inputs(attacks=attacks)
    assert verdict is True or (isinstance(verdict, str) and verdict), verdict
    if isinstance(verdict, str):  # each bad token named once
        assert verdict.count("; ") < 200 and "Traceback" not in verdict


@bounded(60)
@given(attacks=mostly(st.sampled_from(["none, jpeg:75", "blur:2, resize:0.25", "crop:0.3, rotate:-45", "blur:10",
                                        "noise:0.5, screenshot:0.25", "jpeg444:1, webp:1", "resize:0.05",
                                        "vae, impress:5, diffpure, noisy_upscale", "crop:1; rotate:45"]),
                       attack_specs(), 1, 1),
       cloaked=mostly(VALID_IMAGES, images(sides=st.sampled_from([32, 40, 33]))),
       target_kind=st.sampled_from(["style_target", "style_target", "anchor_image", "anchor_latent", "odd"]),
       seed=st.integers(0, 2**31 - 1))
def test_robustness_check_with_odd_inputs(h, attacks, cloaked, target_kind, seed):
    usable = isinstance(cloaked, torch.Tensor) and cloaked.is_floating_point() and cloaked.ndim == 4
    original = torch.nan_to_num(cloaked.float(), 0.5, 1, 0).clamp(0, 1) if usable else torch.rand(1, 32, 32, 3)
    if usable and torch.isfinite(cloaked).all():
        cloaked = (original + 0.02 * torch.randn(original.shape, generator=torch.Generator().manual_seed(seed))
                   ).clamp(0, 1).to(cloaked.dtype)
    target = {"style_target": h.target, "anchor_image": h.style,
              "anchor_latent": {"samples": torch.randn(1, 4, 5, 6)}, "odd": "a style"}[target_kind]
    outcome(h, lambda: h.nodes["RobustnessCheck"].execute(
        original=original, cloaked=cloaked, encoder=h.encoder, target=target, attacks=attacks, seed=seed),
        ["attack", "original", "cloaked", "target", "anchor", "image"])


@bounded(100)
@given(folder=mostly(st.just("poison_set/sub"), TEXT, 1, 1), concept=mostly(st.just("cow"), TEXT, 1, 1),
       prefix=mostly(st.just("poison"), TEXT, 1, 1), repeats=st.sampled_from([0, 1, 10, 10000]),
       captions=mostly(st.just(["a cow"]), st.lists(TEXT, min_size=0, max_size=3)), count=st.sampled_from([1, 1, 2, 0]))
@example(folder="x" * 300, concept="cow", prefix="poison", repeats=0, captions=["a cow"], count=1)
@example(folder="ab/" * 1500, concept="cow", prefix="poison", repeats=0, captions=["a cow"], count=1)
@example(folder="poison_set", concept="c" * 300, prefix="poison", repeats=10, captions=["a cow"], count=1)
@example(folder="poison_set", concept="cow", prefix="p" * 300, repeats=0, captions=["a cow"], count=1)
@example(folder="poison_set", concept="cow", prefix="poison", repeats=0, captions=["x" * 100000], count=1)
def test_save_poison_dataset_with_odd_names(h, folder, concept, prefix, repeats, captions, count):
    batch = [torch.rand(1, 8, 8, 3)] * count
    out = outcome(h, lambda: h.nodes["SavePoisonDataset"].execute(
        images=batch, captions=captions, folder=[folder], repeats=[repeats], concept=[concept],
        filename_prefix=[prefix]), ["folder", "concept", "filename_prefix", "caption", "images"])
    if not isinstance(out, Exception):
        directory = out.args[2]
        assert os.path.realpath(directory).startswith(os.path.realpath(h.output_dir) + os.sep)


@bounded(30)
@given(vae=st.sampled_from([None, "taesd", 3, torch.zeros(3), {"samples": 1}, "pixel_space"]),
       weight=st.sampled_from([1.0, 0.01, 0.0, -1.0, float("nan"), 100.0]),
       precision=st.sampled_from(["auto", "fp32", "fp16", "bf16", "fp8"]))
def test_load_vae_encoder_with_odd_vaes(h, vae, weight, precision):
    if vae == "pixel_space":
        vae = h.nodes["VAELoader"]().load_vae("pixel_space")[0]
    elif vae == "taesd":
        vae = h.vae
    outcome(h, lambda: h.nodes["LoadVAEEncoder"].execute(vae=vae, vae_name="none", precision=precision,
                                                         weight=weight),
            ["vae", "weight", "precision", "encoder"])


@bounded(40)
@given(folder=TEXT)
@example(folder="x" * 300)
def test_load_artwork_folder_with_odd_folders(h, folder):
    if "LoadArtworkFolder" not in h.nodes:
        pytest.skip("LoadArtworkFolder is not in this version of the pack")
    outcome(h, lambda: h.nodes["LoadArtworkFolder"].execute(folder=folder), ["folder"])


@bounded(40)
@given(folder=mostly(st.just("cloak/portfolio"), TEXT, 1, 1),
       names=mostly(st.just(["a.png", "b.png"]), st.lists(TEXT, min_size=0, max_size=2)),
       count=st.sampled_from([2, 2, 1, 0]))
@example(folder="x" * 300, names=["a.png"], count=1)
@example(folder="ab/" * 1500, names=["a.png"], count=1)
@example(folder="cloak/portfolio", names=["n" * 300 + ".png"], count=1)
def test_save_cloaked_folder_with_odd_names(h, folder, names, count):
    if "SaveCloakedFolder" not in h.nodes:
        pytest.skip("SaveCloakedFolder is not in this version of the pack")
    batch = [torch.rand(1, 8, 8, 3)] * count
    outcome(h, lambda: h.nodes["SaveCloakedFolder"].execute(images=batch, names=names, folder=[folder]),
            ["folder", "names", "images"])
