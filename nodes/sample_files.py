"""Puts the pack's sample images into ComfyUI's input folder on first load, so the shipped workflows run as
they open: ``samples/*.png`` into the input folder, ``samples/portfolio/`` into ``input/cloak_portfolio/``.
Never overwrites: a file already there (the user's own, or an earlier copy) is left as it is."""
from __future__ import annotations

import logging
import os
import shutil

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
PORTFOLIO_FOLDER = "cloak_portfolio"


def install_samples(input_dir: str) -> list[str]:
    """Copy missing sample images into ``input_dir``; returns the paths written. Failures are logged, not raised
    (a read-only input folder must not stop the pack from loading)."""
    plan = [(os.path.join(SAMPLES, f), os.path.join(input_dir, f))
            for f in sorted(os.listdir(SAMPLES)) if f.endswith(".png")]
    portfolio = os.path.join(SAMPLES, "portfolio")
    if os.path.isdir(portfolio):
        plan += [(os.path.join(portfolio, f), os.path.join(input_dir, PORTFOLIO_FOLDER, f))
                 for f in sorted(os.listdir(portfolio)) if f.endswith(".png")]
    written = []
    for src, dst in plan:
        if os.path.lexists(dst):
            continue
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(src, "rb") as fin, open(dst, "xb") as fout:
                shutil.copyfileobj(fin, fout)
            written.append(dst)
        except FileExistsError:
            continue
        except OSError as e:
            logging.warning("ComfyUI-Cloak: could not copy sample %s to %s (%s); the example workflows need it "
                            "in ComfyUI's input folder", src, dst, e)
    if written:
        logging.info("ComfyUI-Cloak: copied %d sample images into %s", len(written), input_dir)
    return written


def install_into_comfy_input() -> None:
    try:
        import folder_paths

        install_samples(folder_paths.get_input_directory())
    except Exception as e:  # never block loading the nodes
        logging.warning("ComfyUI-Cloak: sample images not installed: %s", e)
