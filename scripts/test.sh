#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite headless (pytest-xvfb starts an X server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
