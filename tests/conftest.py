"""Fixtures shared by several test modules (each one module-scoped, built once per module that asks).

- ``one_thread``: not autouse; a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
- ``tiny``: the tiny experiment config and atlas.
- ``five_subjects``: a tiny simulated dataset (3 train, 1 val, 1 test subjects).
- ``tiny_model``: an untrained, seeded, weights-only tiny checkpoint.
- ``chromium``: opens a local HTML file in headless Chromium (Debian's package), offline; skips without it.
- ``fresh_python``: runs code in a fresh interpreter (what a command's start-up imports) and returns its stdout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biplanar.config import load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.io.report_html import HEADLESS_CHROMIUM_FLAGS
from biplanar.models.network import AtlasRegistrationNet
from biplanar.training.checkpoints import FORMAT, VERSION


@pytest.fixture(scope="module")
def fresh_python() -> Callable[[str], str]:
    """``run(code)``: the stdout of ``python -c code`` in a fresh interpreter, which must exit 0."""

    def run(code: str) -> str:
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on a loaded 2-core machine two threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """``(ExperimentConfig, Atlas)`` of the ``tiny`` preset."""
    return load_config("tiny"), load_atlas("tiny")


@pytest.fixture(scope="module")
def five_subjects(tmp_path_factory) -> Path:
    """Tiny dataset: 3 train, 1 val, 1 test subjects."""
    out = tmp_path_factory.mktemp("five")
    simulate_dataset(out, 5, 3, SimulationConfig(preset="tiny"), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained weights-only tiny checkpoint (seeded)."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    config = load_config("tiny")
    network = AtlasRegistrationNet(config, load_atlas("tiny"))
    torch.save({"format": FORMAT, "version": VERSION, "config": config.to_dict(), "model": network.state_dict()}, path)
    return path


# report.html's headless flags, and the page's console messages on stderr.
CHROMIUM_FLAGS = (*HEADLESS_CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0")
CHROMIUM_TIMEOUT_S = 120
CHROMIUM_WINDOW = (1280, 1400)  # CSS px: report.html's 3D panel and tables without scrolling
# stderr lines of the page's console messages: [pid:tid:time:INFO:CONSOLE:line] "message", source: url (line)
CONSOLE_LINE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] \"(?P<message>.*)\", source: ")


@dataclass(frozen=True)
class BrowserPage:
    """A page as headless Chromium left it.

    Attributes:
        dom: the serialised DOM after the page's scripts ran (``--dump-dom``).
        console: the page's console messages (every level: Chromium logs them all as INFO), less
            SwiftShader's "GL Driver Message" performance notes (the browser's, not the page's).
        screenshot: ``(H, W, 3)`` uint8 RGB of the window, one pixel per CSS px.
    """

    dom: str
    console: list[str]
    screenshot: np.ndarray

    def attributes(self, element_id: str) -> dict[str, str]:
        """The attributes of the element ``id="element_id"`` in :attr:`dom` (``{}``: no such element)."""
        tag = re.search(rf'<[a-z]+ [^>]*\bid="{re.escape(element_id)}"[^>]*>', self.dom)
        return {} if tag is None else dict(re.findall(r'([\w-]+)="([^"]*)"', tag[0]))

    def region(self, rect: str) -> np.ndarray:
        """The screenshot's ``(height, width, 3)`` pixels in ``rect`` = ``"left,top,width,height"`` (CSS px)."""
        left, top, width, height = (int(value) for value in rect.split(","))
        return self.screenshot[top : top + height, left : left + width]


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Callable[[Path], BrowserPage]:
    """``open_page(path)``: the :class:`BrowserPage` of a local HTML file in a :data:`CHROMIUM_WINDOW` window."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium): no browser test")

    def open_page(path: Path) -> BrowserPage:
        folder = tmp_path_factory.mktemp("chromium")
        screenshot = folder / "screenshot.png"
        command = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={folder / 'profile'}",
            f"--window-size={CHROMIUM_WINDOW[0]},{CHROMIUM_WINDOW[1]}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            Path(path).resolve().as_uri(),
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
        assert run.returncode == 0 and screenshot.is_file(), f"chromium failed ({run.returncode}): {run.stderr[-2000:]}"
        messages = (match["message"] for match in CONSOLE_LINE.finditer(run.stderr))
        console = [message for message in messages if "GL Driver Message" not in message]
        with Image.open(screenshot) as image:
            return BrowserPage(run.stdout, console, np.asarray(image.convert("RGB")))

    return open_page


def crowded_tube(depths_mm: np.ndarray, turn_rad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``((V, 3) mm, (F, 3))``: a tube of 15 mm radius around the -x axis, a ring of vertices at each
    depth (mm along -x), triangulated; the vertices crowd towards +y (the angles squeezed
    quadratically), the crowd turning by ``turn_rad`` about the axis from the first ring to the last."""
    turns = np.linspace(0.0, turn_rad, len(depths_mm))[:, None]
    angles = 2 * np.pi * np.linspace(0.0, 1.0, 180, endpoint=False) ** 2 + turns  # (rings, 180)
    rings = np.stack(
        [-np.broadcast_to(depths_mm[:, None], angles.shape), 15.0 * np.cos(angles), 15.0 * np.sin(angles)], -1
    )
    count = angles.shape[1]
    i, j = np.meshgrid(np.arange(len(depths_mm) - 1), np.arange(count), indexing="ij")
    a, b = i * count + j, i * count + (j + 1) % count
    c, d = a + count, b + count
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return rings.reshape(-1, 3), faces


@pytest.fixture(scope="session")
def make_crowded_tube() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`crowded_tube` itself."""
    return crowded_tube


@pytest.fixture(scope="session")
def crowded_neck_tube() -> tuple[np.ndarray, np.ndarray]:
    """:func:`crowded_tube` 10 to 40 mm off the origin (a neck, the head centre at the origin)."""
    return crowded_tube(np.linspace(10.0, 40.0, 61))
