"""Run a bundled workflow on a real ComfyUI server and keep what it produced (README command one).

    bash scripts/demo.sh                                   # setup + workflows/glaze_basic.json on samples/
    .host/venv/bin/python scripts/demo.py --workflow workflows/glaze_basic.json --image my.png

Starts the host of scripts/setup_host.sh, copies the images into the server's input folder, converts the
UI workflow to an API prompt with the server's own /object_info, points its LoadImage nodes at the images
(a LoadImage titled "...style..." gets --style-image, every other one --image), runs it, and copies the
images and the report text it produced to output/demo/ under new numbered names (never overwriting).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import time

from comfy_server import ROOT, ComfyError, ComfyServer, WorkflowError, texts, ui_to_api

DEFAULT_WORKFLOW = os.path.join(ROOT, "workflows", "glaze_basic.json")
DEFAULT_IMAGE = os.path.join(ROOT, "samples", "coffee.png")
DEFAULT_STYLE = os.path.join(ROOT, "samples", "coffee_style.png")
DEFAULT_OUT = os.path.join(ROOT, "output", "demo")


def point_load_images(prompt: dict, image: str, style_image: str) -> list[str]:
    """Set every LoadImage's file: titles containing "style" get style_image, the others image."""
    changed = []
    for node_id, node in prompt.items():
        if node["class_type"] == "LoadImage":
            is_style = "style" in node.get("_meta", {}).get("title", "").lower()
            node["inputs"]["image"] = style_image if is_style else image
            changed.append(f"{node['_meta'].get('title', node_id)} <- {node['inputs']['image']}")
    return changed


def next_run_number(out_dir: str) -> int:
    """The smallest N >= 1 that no file in out_dir uses as its `_N` suffix yet."""
    taken = set()
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else ():
        match = re.search(r"_(\d+)(?:_\d+)?\.[^.]+$", name)
        if match:
            taken.add(int(match.group(1)))
    return next(n for n in itertools.count(1) if n not in taken)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "node"


def collect(server: ComfyServer, prompt: dict, entry: dict, out_dir: str) -> list[str]:
    """Copy a finished prompt's files and texts to out_dir as <name>_N[_k].ext and report_N.txt, where
    <name> is a saving node's filename_prefix (else the node title) and N the first unused run number."""
    os.makedirs(out_dir, exist_ok=True)
    run = next_run_number(out_dir)
    written = []
    for node_id in entry.get("outputs", {}):
        files = server.output_files({"outputs": {node_id: entry["outputs"][node_id]}})
        node = prompt.get(node_id, {})
        prefix = node.get("inputs", {}).get("filename_prefix")  # SaveImage & co: name after the file
        stem = _slug(os.path.basename(prefix) if isinstance(prefix, str) and prefix.strip("/")
                     else node.get("_meta", {}).get("title", node_id))
        for k, src in enumerate(files):
            suffix = f"_{k + 1}" if len(files) > 1 else ""
            dst = os.path.join(out_dir, f"{stem}_{run}{suffix}{os.path.splitext(src)[1]}")
            shutil.copyfile(src, dst)
            written.append(dst)
    shown = texts(entry)
    if shown:
        report = os.path.join(out_dir, f"report_{run}.txt")
        with open(report, "w", encoding="utf-8") as f:
            for node_id, values in shown.items():
                title = prompt.get(node_id, {}).get("_meta", {}).get("title", node_id)
                f.write(f"# {title} (node {node_id})\n" + "\n".join(values).rstrip() + "\n\n")
        written.append(report)
    return written


def run_workflow(server: ComfyServer, workflow_path: str, image: str, style_image: str, out_dir: str,
                 timeout: float = 3600.0) -> tuple[list[str], dict]:
    """Run one UI workflow on a started server; returns (files written to out_dir, history entry)."""
    with open(workflow_path, encoding="utf-8") as f:
        prompt = ui_to_api(json.load(f), server.object_info)
    names = []
    for path in (image, style_image):
        shutil.copyfile(path, os.path.join(server.input_dir, os.path.basename(path)))
        names.append(os.path.basename(path))
    for line in point_load_images(prompt, *names):
        print(f"[demo] {line}")
    start = time.monotonic()
    entry = server.run(prompt, timeout=timeout)
    print(f"[demo] finished in {time.monotonic() - start:.0f} s")
    return collect(server, prompt, entry, out_dir), entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="UI-format workflow JSON")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the artwork (PNG/JPG)")
    parser.add_argument("--style-image", default=DEFAULT_STYLE, help="image for LoadImage nodes titled '...style...'")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where results are copied (default output/demo)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra ComfyUI command-line argument (repeatable), e.g. --server-arg=--fp32-vae")
    args = parser.parse_args(argv)
    for path in (args.workflow, args.image, args.style_image):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    print(f"[demo] starting ComfyUI ({os.path.relpath(args.workflow, ROOT)})")
    try:
        with ComfyServer(extra_args=tuple(args.server_arg)) as server:
            print(f"[demo] server up at {server.url} ({'CPU' if server.cpu else 'GPU'}); running the workflow")
            written, _ = run_workflow(server, args.workflow, args.image, args.style_image, args.out, args.timeout)
    except (ComfyError, WorkflowError, TimeoutError) as e:
        print(f"[demo] failed: {e}", file=sys.stderr)
        return 1
    for path in written:
        shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
        print(f"[demo] wrote {shown}")
        if path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                print(f.read().rstrip())
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
