"""``report.html`` (:mod:`biplanar.io.report_html`): the mesh's encoding, a page that needs nothing else,
and the page in headless Chromium: a sphere drawn where the camera's closed form puts it, errors caught."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
import trimesh

from biplanar.io import report_html
from biplanar.io.report_html import (
    VIEWER_BACKGROUND,
    ReportContents,
    ReportRow,
    mesh_document,
    render_report_html,
    write_report_html,
)

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
FIELD_OF_VIEW_DEG, FRAMING = 30.0, 1.15  # viewer.js: the camera's vertical field of view and distance factor
BACKGROUND_RGB = np.array([int(VIEWER_BACKGROUND[i : i + 2], 16) for i in (1, 3, 5)])
DRAWN_MIN_RGB_DIFFERENCE = 60  # sum over R, G, B of a pixel's distance from the background to count as drawn


def contents(vertices: np.ndarray, faces: np.ndarray, landmarks=None) -> ReportContents:
    return ReportContents(
        title="a test page",
        side="right",
        vertices_world=vertices,
        faces=faces,
        landmarks_mm=landmarks or {},
        images={"AP: one pixel": PNG_1X1},
        measurements=[
            ReportRow("head diameter", 46.25, "mm", "twice the radius"),
            ReportRow("centre", [1, 2, 3], "mm"),
        ],
        quality={
            "projection_ncc": {"AP": 0.91, "LAT": 0.62},
            "threshold": 0.79,
            "silhouette_dice": {"AP": 0.98, "LAT": 0.95},
            "silhouette_threshold": 0.97,
            "flag": True,
            "definition": "NCC",
        },
        timings_s={"network": 0.5, "total": 1.25},
        scores=[ReportRow("Dice", None)],
        network="the bundled <lite> (a femur in a body)",
    )


def sphere(centre=(10.0, -20.0, 5.0), radius: float = 30.0):
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return np.asarray(mesh.vertices) + centre, np.asarray(mesh.faces)


def decoded_mesh(page: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(V, 3)`` vertices and ``(F, 3)`` faces a page's viewer reads."""
    document = json.loads(re.search(r'<script type="application/json" id="mesh-data">(.*?)</script>', page)[1])
    index_type = {2: "<u2", 4: "<u4"}[document["index_bytes"]]
    vertices = np.frombuffer(base64.b64decode(document["positions"]), "<f4").reshape(-1, 3)
    return vertices, np.frombuffer(base64.b64decode(document["indices"]), index_type).reshape(-1, 3)


@pytest.mark.parametrize("count, index_bytes", [(100, 2), (70_000, 4)])
def test_mesh_round_trips_in_order_with_the_smallest_index_type(count, index_bytes):
    rng = np.random.default_rng(0)
    vertices, faces = rng.normal(0, 50, (count, 3)), rng.integers(0, count, (2 * count, 3))
    document = mesh_document(vertices, faces)
    assert document["index_bytes"] == index_bytes
    page = render_report_html(contents(vertices, faces))
    decoded_vertices, decoded_faces = decoded_mesh(page)
    np.testing.assert_array_equal(decoded_vertices, vertices.astype(np.float32))
    np.testing.assert_array_equal(decoded_faces, faces)


@pytest.mark.parametrize(
    "vertices, faces, message",
    [
        (np.zeros((4, 2)), np.zeros((1, 3), int), r"vertices_world: expected shape \(V, 3\)"),
        (np.zeros((4, 3)), np.zeros((1, 4), int), r"faces: expected shape \(F, 3\)"),
        (np.full((4, 3), np.nan), np.zeros((1, 3), int), "finite"),
        (np.zeros((4, 3)), np.array([[0, 1, 4]]), r"indices in \[0, 4\), got \[0, 4\]"),
    ],
)
def test_bad_meshes_are_refused(vertices, faces, message):
    with pytest.raises(ValueError, match=message):
        mesh_document(vertices, faces)


def test_page_needs_no_other_file_and_shows_the_tables(tmp_path):
    vertices, faces = sphere()
    write_report_html(tmp_path / "report.html", contents(vertices, faces, {"a </script><b>": [0, 0, 0]}))
    assert [path.name for path in tmp_path.iterdir()] == ["report.html"]  # written atomically
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    outside_library = re.sub(r'<script type="text/plain" id="three-module">.*?</script>', "", page, flags=re.S)
    # Every address the page could load is inline data; the only import is the inlined library's Blob URL.
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", outside_library) == [
        "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()
    ]
    assert "<link" not in outside_library and "http" not in outside_library.replace("https://github", "")
    assert "THREE.REVISION" not in outside_library and 'const t="170"' in page  # three.js r170, inlined once
    assert page.count("<script") == page.count("</script>") == 4  # the landmark name did not close a script
    for cell in ("<td>head diameter</td><td class='number'>46.25</td><td>mm</td>", "(1.0, 2.0, 3.0)", "n/a"):
        assert cell in page
    assert "flagged: check the overlays" in page and "<td>total</td><td class='number'>1.25</td><td>s</td>" in page
    assert "network: the bundled &lt;lite&gt; (a femur in a body) &middot;" in page


def drawn(panel: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the pixels of a ``(H, W, 3)`` 3D panel that differ from its background."""
    return np.abs(panel.astype(int) - BACKGROUND_RGB).sum(axis=-1) > DRAWN_MIN_RGB_DIFFERENCE


def test_browser_draws_the_sphere_as_the_camera_sees_it(tmp_path, chromium):
    """A sphere fills the disc the perspective camera's closed form gives: the camera sits on the
    bounding sphere's centre line at ``FRAMING r / sin(fov / 2)``, so the sphere's silhouette subtends
    ``asin(sin(fov / 2) / FRAMING)`` and its radius on screen is ``(H / 2) tan(that) / tan(fov / 2)``."""
    vertices, faces = sphere()
    write_report_html(tmp_path / "report.html", contents(vertices, faces))
    page = chromium(tmp_path / "report.html")
    assert page.attributes("report-page")["data-errors"] == "0"
    assert page.console == []
    viewer = page.attributes("viewer")
    assert viewer["data-state"] == "drawn"
    sphere_pixels = drawn(page.region(viewer["data-rect"]))
    height, width = sphere_pixels.shape
    half_fov = math.radians(FIELD_OF_VIEW_DEG / 2)
    radius_px = height / 2 * math.tan(math.asin(math.sin(half_fov) / FRAMING)) / math.tan(half_fov)
    assert sphere_pixels.mean() == pytest.approx(math.pi * radius_px**2 / (width * height), rel=0.02)
    assert sphere_pixels[height // 2, width // 2] and not sphere_pixels[0, 0] and not sphere_pixels[-1, -1]


def test_browser_errors_are_caught_on_the_page(tmp_path, chromium, monkeypatch):
    """A library that fails to load leaves the 3D panel undrawn and is counted in data-errors."""
    library, resource = "throw new Error('three.js failed to load');", report_html._resource
    monkeypatch.setattr(report_html, "_resource", lambda name: library if name.endswith(".min.js") else resource(name))
    vertices, faces = sphere()
    write_report_html(tmp_path / "report.html", contents(vertices, faces))
    page = chromium(tmp_path / "report.html")
    assert int(page.attributes("report-page")["data-errors"]) >= 1 and "three.js failed to load" in page.dom
    assert "data-state" not in page.attributes("viewer")
    assert any("three.js failed to load" in message for message in page.console)
