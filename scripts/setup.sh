#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian/Ubuntu machine: system libraries for a
# headless Qt/OpenGL display, a virtual environment in .venv, the CPU build of PyTorch,
# and napari-edgesam with everything needed for the demo and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libxkbcommon-x11-0
  libgl1 libegl1 libdbus-1-3 libfontconfig1 libglib2.0-0)
TORCH_SPEC="${NAPARI_EDGESAM_TORCH:-torch==2.13.0}"
# PyTorch's CPU wheels. Set NAPARI_EDGESAM_TORCH_INDEX to another index (e.g. .../whl/cu126)
# and NAPARI_EDGESAM_TORCH_CUDA=1 to install a CUDA build on purpose.
TORCH_INDEX="${NAPARI_EDGESAM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
WANT_CUDA="${NAPARI_EDGESAM_TORCH_CUDA:-0}"
PYTHON="${PYTHON:-python3}"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install an X virtual framebuffer (Xvfb) and Qt's xcb libraries" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# PyTorch first, from the CPU wheel index: PyPI's default torch is a multi-GB CUDA build.
# Only where that index cannot be reached do we fall back to the default index (pip's own
# configuration, e.g. a local wheel folder); the check below then refuses a CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if ! $PIP install -q --retries 1 --timeout 60 --index-url "$TORCH_INDEX" "$TORCH_SPEC"; then
    echo "setup: $TORCH_INDEX could not be used; trying pip's default index for $TORCH_SPEC" >&2
    $PIP install -q "$TORCH_SPEC"
  fi
  if [ "$WANT_CUDA" != 1 ] && ! .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
    echo "setup: the installed torch is a CUDA build (several GB) although the CPU build was asked for." >&2
    echo "setup: remove it (.venv/bin/pip uninstall -y torch) and install the CPU wheel:" >&2
    echo "setup:   .venv/bin/pip install '$TORCH_SPEC' --index-url https://download.pytorch.org/whl/cpu" >&2
    echo "setup: or set NAPARI_EDGESAM_TORCH_CUDA=1 to keep a CUDA build." >&2
    exit 1
  fi
fi
.venv/bin/python -c "import torch; print('setup: torch', torch.__version__, '(CUDA ' + str(torch.version.cuda) + ')' if torch.version.cuda else '(CPU build)')"
$PIP install -q -e ".[testing]"
echo "setup: done (.venv ready)"
