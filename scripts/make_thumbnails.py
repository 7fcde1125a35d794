"""Template thumbnails and README screenshots from the browser tests' screenshots.

    .host/venv/bin/python -m pytest -q tests/test_browser.py      # writes tests/artifacts/browser/<name>.png
    .host/venv/bin/python scripts/make_thumbnails.py              # writes workflows/<name>.jpg

ComfyUI serves a custom node pack's `workflows/` (or `example_workflows/`) folder as templates and shows
`<name>.jpg` beside `<name>.json` as the template's thumbnail (app/custom_node_manager.py, front end 1.32).
"""
from __future__ import annotations

import glob
import os

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.path.join(ROOT, "tests", "artifacts", "browser")
WIDTH = 960


def main() -> None:
    made = 0
    for shot in sorted(glob.glob(os.path.join(SHOTS, "*.png"))):
        name = os.path.splitext(os.path.basename(shot))[0]
        if not os.path.isfile(os.path.join(ROOT, "workflows", f"{name}.json")):
            continue
        with Image.open(shot) as im:
            im = im.convert("RGB")
            im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.LANCZOS)
            out = os.path.join(ROOT, "workflows", f"{name}.jpg")
            im.save(out, quality=82, optimize=True)
        print(f"{out}: {os.path.getsize(out) // 1024} KB")
        made += 1
    if not made:
        raise SystemExit(f"no screenshots in {SHOTS}: run tests/test_browser.py first")


if __name__ == "__main__":
    main()
