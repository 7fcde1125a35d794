#!/usr/bin/env bash
# The browser tests' needs (tests/test_browser.py): Debian's headless Chromium and its chromedriver (apt), and
# Selenium in the host venv (requirements-dev.txt, installed by setup_host.sh). Installs what is missing when it
# can (root + apt-get); otherwise says what is missing and exits 1, so a run without a browser fails loudly.
set -euo pipefail
missing=()
for tool in chromium chromedriver; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium and chromium-driver for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || echo "[setup] apt-get update failed" >&2
    apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null || echo "[setup] apt-get install failed" >&2
  fi
  for tool in chromium chromedriver; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "[setup] ERROR: $tool is not installed and could not be installed: the browser tests need Debian's" \
           "chromium and chromium-driver packages (apt-get install chromium chromium-driver, as root)" >&2
      exit 1
    fi
  done
fi
echo "[setup] browser ready: $(chromium --version 2>/dev/null | head -1)"
