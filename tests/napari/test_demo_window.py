"""The demo window: it opens, segments one nucleus and saves a screenshot."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_screenshot_with_the_golden_checkpoint(golden_checkpoint, tmp_path):
    out = tmp_path / "demo.png"
    env = dict(os.environ, NAPARI_EDGESAM_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "napari_edgesam.cli", "demo", "--model", str(golden_checkpoint),
         "--screenshot", str(out), "--timeout", "300"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved" in proc.stdout
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600
    assert img[..., :3].std() > 10  # not a blank window
