"""HTML → PDF with headless Chromium (Debian's ``chromium``; no browser download).

Chromium renders the same self-contained page as the HTML report, so the PDF shows the
same numbers; it is given a private profile folder and no network use beyond the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TIMEOUT_S = 120.0
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENV_BROWSER = "FEDFLEET_CHROMIUM"


class PdfError(RuntimeError):
    """The PDF could not be made; the message says how to fix it."""


def find_chromium() -> str:
    """``$FEDFLEET_CHROMIUM``, else the first Chromium on ``PATH``."""
    explicit = os.environ.get(ENV_BROWSER)
    if explicit:
        if not Path(explicit).is_file():
            raise PdfError(f"${ENV_BROWSER}={explicit} does not exist; point it at chromium")
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PdfError(
        "a PDF needs headless Chromium and none is installed; `apt-get install -y chromium` "
        f"(or set ${ENV_BROWSER}), or write HTML with --out report.html"
    )


def html_to_pdf(source: Path, target: Path) -> bytes:
    """Print ``source`` (an HTML file) to PDF; the PDF's bytes."""
    browser = find_chromium()
    with tempfile.TemporaryDirectory(prefix="fedfleet-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            source.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise PdfError(f"{browser} did not print the PDF within {TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise PdfError(f"{browser} could not print the PDF ({reason})")
    data = target.read_bytes()
    if not data.startswith(b"%PDF"):
        raise PdfError(f"{browser} wrote something that is not a PDF to {target}")
    return data
