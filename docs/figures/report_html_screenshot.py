"""Screenshot of ``report.html`` (docs/img/report_html.png): the page ``biplanar demo`` writes for its
held-out patient, as headless Chromium (Debian's ``chromium`` package) draws it.

The demo runs through the public API (:func:`biplanar.run_demo`, what ``biplanar demo`` calls) with
the bundled ``lite`` model into a scratch folder, unless ``--demo`` names the folder of a demo
already run.

Usage::

    python docs/figures/report_html_screenshot.py --out docs/img/report_html.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import biplanar
from biplanar.io.report_html import HEADLESS_CHROMIUM_FLAGS

WINDOW = (1280, 1250)  # CSS px: the whole page of a demo, without scrolling


def screenshot(page: Path, out: Path, scratch: Path) -> None:
    """Write the PNG of ``page`` in a :data:`WINDOW`-sized window to ``out``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            chromium,
            *HEADLESS_CHROMIUM_FLAGS,
            f"--user-data-dir={scratch / 'profile'}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={out.resolve()}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/report_html.png"))
    parser.add_argument("--demo", type=Path, default=None, help="a `biplanar demo` folder (default: run the demo)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if arguments.demo is None:
            page = biplanar.run_demo(Path(scratch) / "demo", progress=False).report_page
        else:
            page = arguments.demo / "registration" / "report.html"
        screenshot(page, arguments.out, Path(scratch))
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
