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
# PyTorch first: the CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" >/dev/null 2>&1 || $PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[testing]"
echo "setup: done (.venv ready)"
