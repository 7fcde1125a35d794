#!/usr/bin/env bash
# README command two: build/refresh the offline ComfyUI host, then run the test suite in its venv.
# Arguments go to pytest; without a test path the whole tests/ folder runs. Exits with pytest's code
# (5, "no tests collected", is a failure too).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_host.sh
bash scripts/setup_browser.sh  # headless Chromium for tests/test_browser.py; fails the run when it cannot be had
paths=()
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then paths+=("$arg"); fi
done
if [ ${#paths[@]} -eq 0 ]; then set -- tests "$@"; fi
rc=0
.host/venv/bin/python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then echo "run_tests: pytest collected no tests" >&2; fi
exit "$rc"
