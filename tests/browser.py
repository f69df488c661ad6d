"""Headless Chromium for tests: screenshots of the static HTML pages the jobs write."""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "chromium", "dark_pixels", "screenshot"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)
WINDOW = (1200, 1600)  # width, height
TIMEOUT_SECONDS = 120
_DARK = 128


def chromium() -> str:
    """Chromium's path; skips the test where it is not installed (fails in CI)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI; scripts/run_tests.sh installs it")
    pytest.skip(f"{CHROMIUM} not installed (scripts/run_tests.sh installs it as root)")


def screenshot(page: pathlib.Path, work_dir: pathlib.Path) -> np.ndarray:
    """Renders `page` in headless Chromium (a fresh profile under `work_dir`); RGBA pixels."""
    path = work_dir / f"{page.stem}.png"
    subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={work_dir / 'chromium-profile'}",
            f"--screenshot={path}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT_SECONDS,
    )
    pixels = tf.io.decode_png(path.read_bytes()).numpy()
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    return pixels


def dark_pixels(pixels: np.ndarray) -> int:
    """Pixels dark in every colour channel: text, on the projects' white pages."""
    return int(np.count_nonzero(pixels[..., :3].max(axis=-1) < _DARK))
