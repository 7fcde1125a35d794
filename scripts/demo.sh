#!/usr/bin/env bash
# README command one: build/refresh the offline ComfyUI host, then run the Glaze demo workflow on the
# bundled sample (results in output/demo/). Extra arguments go to scripts/demo.py (--workflow, --image, ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_host.sh
exec .host/venv/bin/python scripts/demo.py "$@"
