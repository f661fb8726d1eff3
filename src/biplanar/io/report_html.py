"""``report.html``: one self-contained page of a registration's results, to open in a browser.

The page needs no network and no other file: the radiograph overlays are PNG data URIs, the mesh is
base64 little-endian typed arrays (float32 vertex coordinates, uint16 or uint32 face indices), and
the 3D panel is three.js (:data:`THREE_VERSION`, MIT, vendored in ``resources/report/`` with its
licence; README there) inlined as text and imported from a Blob URL by the page's own viewer script
(``resources/report/viewer.js``: drag rotates, the wheel zooms).

A classic script in ``<head>`` records every error of the page (script errors, failed loads,
rejected promises, ``console.error``): ``<html id="report-page" data-errors="N">`` counts them and ``#page-errors``
lists them; the 3D panel ``#viewer`` gets ``data-state="drawn"`` once its first frame is drawn.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from biplanar.io.atomic import atomic_path

THREE_VERSION = "0.170.0"  # the last three.js release whose module build is one file (later ones import a core)
VIEWER_BACKGROUND = "#1d2330"  # the 3D panel's clear colour
UINT16_INDEX_LIMIT = 2**16  # meshes with fewer vertices send their face indices as uint16
# Opening the page in headless Chromium (Debian's ``chromium``), as the tests and the README's screenshot
# (docs/figures/report_html_screenshot.py) do: offline (no network, component or sync traffic), software
# WebGL (SwiftShader, opted in, so that no deprecation warning reaches the console), and virtual time (ms)
# for the page's scripts before the DOM is dumped or the screenshot taken. Add a fresh --user-data-dir.
HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
)


def _resource(name: str) -> str:
    """A file of ``biplanar/resources/report``, as text."""
    return (resources.files("biplanar") / "resources" / "report" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ReportRow:
    """One row of a table of the page.

    Attributes:
        name: what is measured.
        value: a number, a point ``(x, y, z)``, or ``None`` (shown as n/a).
        unit: its unit (``mm``, ``deg``, ``s``; empty for a ratio).
        definition: how it is defined, shown beside it.
    """

    name: str
    value: float | Sequence[float] | None
    unit: str = ""
    definition: str = ""


@dataclass(frozen=True)
class ReportContents:
    """What the page shows, as plain data.

    Attributes:
        title: the page's heading.
        side: ``"right"`` or ``"left"``.
        vertices_world: ``(V, 3)`` float, world RAS+ mm, the mesh's vertices.
        faces: ``(F, 3)`` int, vertex indices, counter-clockwise seen from outside.
        landmarks_mm: name -> ``(3,)`` point, world RAS+ mm, drawn as labelled spheres.
        images: caption -> PNG bytes (the radiographs with their overlays), in order.
        measurements: the hip measurements.
        quality: ``projection_ncc`` and ``silhouette_dice`` (view -> value), ``threshold``,
            ``silhouette_threshold``, ``flag`` (bool) and ``definition`` (``report.json``'s ``quality``).
        timings_s: stage -> seconds.
        scores: scores against a truth (Dice, distances), if any.
        network: which registration network ran, and why (shown under the title), if known.
    """

    title: str
    side: str
    vertices_world: np.ndarray
    faces: np.ndarray
    landmarks_mm: dict[str, Sequence[float]]
    images: dict[str, bytes]
    measurements: Sequence[ReportRow]
    quality: dict[str, Any]
    timings_s: dict[str, float]
    scores: Sequence[ReportRow] = field(default_factory=tuple)
    network: str = ""


def _json_script(element_id: str, document: Any) -> str:
    """``document`` as a JSON data block; ``<`` escaped, so that no string can close the element."""
    text = json.dumps(document, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def mesh_document(vertices_world: np.ndarray, faces: np.ndarray) -> dict[str, Any]:
    """The mesh as the viewer reads it: base64 of little-endian float32 coordinates and of uint16
    (fewer than 65,536 vertices) or uint32 face indices, in the given order.

    Args:
        vertices_world: ``(V, 3)`` world mm.
        faces: ``(F, 3)`` vertex indices.

    Raises:
        ValueError: bad shapes, non-finite vertices or an index outside ``[0, V)``.
    """
    vertices_world, faces = np.asarray(vertices_world), np.asarray(faces)
    if vertices_world.ndim != 2 or vertices_world.shape[1] != 3 or len(vertices_world) == 0:
        raise ValueError(f"vertices_world: expected shape (V, 3) with V > 0, got {vertices_world.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces: expected shape (F, 3) with F > 0, got {faces.shape}")
    if not np.all(np.isfinite(vertices_world)):
        raise ValueError("vertices_world: expected finite coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices_world):
        raise ValueError(f"faces: expected indices in [0, {len(vertices_world)}), got [{faces.min()}, {faces.max()}]")
    index_type = "<u2" if len(vertices_world) < UINT16_INDEX_LIMIT else "<u4"
    return {
        "positions": base64.b64encode(np.ascontiguousarray(vertices_world, "<f4").tobytes()).decode("ascii"),
        "indices": base64.b64encode(np.ascontiguousarray(faces, index_type).tobytes()).decode("ascii"),
        "index_bytes": np.dtype(index_type).itemsize,
    }


def _number(value: float | Sequence[float] | None) -> str:
    """A value as the tables show it: 2 decimals, a point as ``(x, y, z)`` to 0.1."""
    if value is None:
        return "n/a"
    if isinstance(value, Sequence):
        return "(" + ", ".join(f"{float(v):.1f}" for v in value) + ")"
    return f"{float(value):.2f}"


def _table(rows: Sequence[ReportRow], headings: tuple[str, ...] = ("quantity", "value", "unit", "definition")) -> str:
    cells = "".join(
        "<tr>"
        f"<td>{html.escape(row.name)}</td><td class='number'>{_number(row.value)}</td>"
        f"<td>{html.escape(row.unit)}</td>"
        + (f"<td class='definition'>{html.escape(row.definition)}</td>" if len(headings) > 3 else "")
        + "</tr>"
        for row in rows
    )
    head = "".join(f"<th>{html.escape(heading)}</th>" for heading in headings)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def _quality_section(quality: dict[str, Any]) -> str:
    flagged = bool(quality["flag"])
    badge = (
        "<span class='badge bad'>flagged: check the overlays</span>"
        if flagged
        else "<span class='badge good'>passed</span>"
    )
    rows = [ReportRow(f"projection NCC, {view}", value) for view, value in quality["projection_ncc"].items()]
    rows.append(ReportRow("threshold (lowest view)", quality["threshold"]))
    rows += [ReportRow(f"silhouette Dice, {view}", value) for view, value in quality["silhouette_dice"].items()]
    rows.append(ReportRow("silhouette threshold (lowest view)", quality["silhouette_threshold"]))
    return (
        f"<p>{badge}</p>{_table(rows, ('quantity', 'value', 'unit'))}"
        f"<p class='definition'>{html.escape(str(quality['definition']))}</p>"
    )


def _figures(images: dict[str, bytes]) -> str:
    return "".join(
        f"<figure><img alt='{html.escape(caption, quote=True)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, png in images.items()
    )


STYLE = f"""
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1b1f27; background: #f3f4f6; }}
header {{ padding: 14px 24px; background: #fff; border-bottom: 1px solid #d9dce1; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 0 0 8px; }}
main {{ display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; padding: 16px 24px; }}
section {{ background: #fff; border: 1px solid #d9dce1; border-radius: 6px; padding: 12px 16px; }}
.column {{ display: flex; flex-direction: column; gap: 16px; }}
#viewer {{ position: relative; height: 520px; background: {VIEWER_BACKGROUND}; overflow: hidden; cursor: grab; }}
#viewer canvas {{ display: block; }}
.landmark-label {{ position: absolute; font-size: 12px; color: #fff;
  background: rgba(0, 0, 0, 0.55); border: 2px solid; padding: 1px 5px; pointer-events: none;
  white-space: nowrap; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 3px 8px; border-bottom: 1px solid #eceef1; vertical-align: top; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.definition {{ color: #5b6270; font-size: 12px; }}
.badge {{ padding: 2px 8px; border-radius: 10px; font-weight: 600; }}
.good {{ background: #d8f3dc; color: #1b5e20; }} .bad {{ background: #fde2e1; color: #9b1c1c; }}
.figures {{ display: flex; gap: 16px; flex-wrap: wrap; }}
figure {{ margin: 0; flex: 1 1 0; }} figure img {{ width: 100%; image-rendering: pixelated; }}
#page-errors {{ color: #9b1c1c; white-space: pre-wrap; }}
"""

ERROR_RECORDER = """
(function () {
  const errors = [];
  function record(message) {
    errors.push(String(message));
    document.documentElement.dataset.errors = String(errors.length);
    const list = document.getElementById("page-errors");
    if (list) {
      list.hidden = false;
      list.textContent = "errors of this page:\\n" + errors.join("\\n");
    }
  }
  window.addEventListener("error", (event) => record(event.message || "failed to load " + event.target), true);
  window.addEventListener("unhandledrejection", (event) => record(event.reason));
  const consoleError = console.error.bind(console);
  console.error = (...args) => {
    record(args.join(" "));
    consoleError(...args);
  };
})();
"""


def render_report_html(contents: ReportContents) -> str:
    """The page (module doc) as one HTML string.

    Raises:
        ValueError: a bad mesh (:func:`mesh_document`).
    """
    library = _resource("three.module.min.js")
    if "</script" in library.lower():  # it sits in a raw-text element, which that would close
        raise ValueError(f"three.js {THREE_VERSION}: the inlined library must not contain '</script'")
    mesh = mesh_document(contents.vertices_world, contents.faces)
    mesh["background"] = VIEWER_BACKGROUND
    mesh["landmarks"] = [
        {"name": name, "position_mm": [float(v) for v in point]} for name, point in contents.landmarks_mm.items()
    ]
    title = html.escape(contents.title)
    quality = "flagged" if contents.quality["flag"] else "passed"
    timings = [ReportRow(stage, seconds, "s") for stage, seconds in contents.timings_s.items()]
    network = f" network: {html.escape(contents.network)} &middot;" if contents.network else ""
    scores = (
        f"<section><h2>Scores against the truth</h2>{_table(contents.scores, ('quantity', 'value', 'unit'))}</section>"
        if contents.scores
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en" id="report-page" data-errors="0">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script>{ERROR_RECORDER}</script>
<style>{STYLE}</style>
</head>
<body>
<header><h1>{title}</h1>
<div>{html.escape(contents.side)} femur &middot; registration quality: {quality} &middot;{network}
{len(contents.vertices_world)} vertices, {len(contents.faces)} faces &middot; world RAS+ mm</div>
<pre id="page-errors" hidden></pre></header>
<main>
<div class="column">
<section><h2>3D model</h2><div id="viewer"></div>
<p class="definition">Drag to rotate, wheel to zoom. Starts from the front (AP: the patient's right on the left),
superior up. Landmarks are drawn over the surface.</p></section>
<section><h2>Radiographs with the registered femur's outline</h2>
<div class="figures">{_figures(contents.images)}</div></section>
</div>
<div class="column">
<section><h2>Hip measurements</h2>{_table(contents.measurements)}</section>
<section><h2>Registration quality</h2>{_quality_section(contents.quality)}</section>
{scores}
<section><h2>Timings</h2>{_table(timings, ("stage", "time", "unit"))}</section>
</div>
</main>
<script type="text/plain" id="three-module">{library}</script>
{_json_script("mesh-data", mesh)}
<script type="module">{_resource("viewer.js")}</script>
</body>
</html>
"""


def write_report_html(path: str | Path, contents: ReportContents) -> None:
    """Write :func:`render_report_html` of ``contents`` to ``path`` (UTF-8), atomically."""
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(render_report_html(contents), encoding="utf-8")
