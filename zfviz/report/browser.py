"""Headless Chromium for the report: the screenshot kept with the results, and the page check of the tests.

Issue 18: "a test opens it in headless Chromium ... a screenshot of the top of the page is kept with the
results". Debian's ``chromium`` (156 here) runs the new headless mode with ``--headless``; as root it
needs ``--no-sandbox``. Each call gets a fresh profile folder, so two runs side by side never share one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from zfviz.utils import atomic_path

NAMES = ("chromium", "chromium-browser")
MISSING = "headless Chromium not installed (Debian package chromium; make test installs it as root)"


def find_chromium() -> str | None:
    """The path of the first Chromium binary on PATH, or None."""
    return next((path for path in map(shutil.which, NAMES) if path), None)


def chromium_command(binary: str, profile: str | Path, *flags: str) -> list[str]:
    """``binary`` headless with a throwaway ``profile``; ``--no-sandbox`` only where it is needed (root)."""
    command = [binary, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")
    return [*command, *flags]


def run_chromium(url: str, *flags: str, binary: str | None = None, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with ``flags``; its stdout (``--dump-dom``: the page after load).

    Raises ``RuntimeError`` without a binary, ``subprocess.CalledProcessError`` when it fails."""
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError(MISSING)
    with tempfile.TemporaryDirectory(prefix="zfviz-chromium-") as profile:
        done = subprocess.run(
            chromium_command(binary, profile, *flags, url), capture_output=True, text=True, timeout=timeout, check=True
        )
    return done.stdout


def screenshot(html: str | Path, png: str | Path, width: int = 1200, height: int = 900) -> Path:
    """The top ``width`` x ``height`` pixels of ``html`` as rendered by headless Chromium, written to
    ``png`` atomically (Chromium picks the format from the extension, so it writes into a folder of its
    own first)."""
    png = Path(png)
    with tempfile.TemporaryDirectory(prefix="zfviz-shot-") as folder:
        shot = Path(folder) / "shot.png"
        run_chromium(Path(html).resolve().as_uri(), f"--screenshot={shot}", f"--window-size={width},{height}",
                     "--virtual-time-budget=3000")  # fmt: skip
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(f"chromium wrote no screenshot of {html}")
        with atomic_path(png) as tmp:
            shutil.copyfile(shot, tmp)
    return png
