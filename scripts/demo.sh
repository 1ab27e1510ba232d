#!/usr/bin/env bash
# Set up (idempotent) and open napari with a sample image, the EdgeSAM widget docked and an
# object already segmented. Without a display it runs on a virtual one and saves a screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/napari-edgesam demo "$@"
fi
out="${DEMO_SCREENSHOT:-demo_screenshot.png}"
echo "demo: no display found; running on a virtual display and saving $out"
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-edgesam demo --screenshot "$out" "$@"
