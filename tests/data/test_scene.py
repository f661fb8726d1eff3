"""The body scene (``simulate --scene body``): no step along the projected faces of the
registration grid, the grid cut from the scene, the other hip in the radiographs, every ray's
reach inside the scene, and ``--scene grid`` as before. All on the ``tiny`` preset."""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from typer.testing import CliRunner

from biplanar import api
from biplanar.cli import app
from biplanar.data.body_shape import BodyParameters
from biplanar.data.grid_presets import grid_preset
from biplanar.data.masks import femur_masks
from biplanar.data.phantom import SubjectSpec, make_subject, render_ct_hu, render_subject
from biplanar.data.scene import RenderedScene, render_scene, right_half, visible_z_range
from biplanar.data.simulate import (
    SimulationConfig,
    case_femur_shape,
    case_views,
    render_radiographs,
    simulate_case,
)
from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid, biplanar_pair
from biplanar.geometry.projection import ProjectionView

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"
GRID = grid_preset("tiny")
CONFIG = SimulationConfig(preset="tiny", geometry="orthogonal")
SEEDS = (0, 1)
MU_WATER_PER_MM = 0.02  # CONTRACT section 3
# A step along the faces makes the DRR's curvature there several times its 90th percentile
# elsewhere (3 to 8 with --scene grid at this preset); without one it stays below (0.3 to 0.8).
STEP_RATIO = 2.0


def subject_spec(seed: int) -> SubjectSpec:
    """Subject ``seed`` with the mean body, whose skin lies outside the detectors' fields of view
    (a thin subject's lateral skin is a real edge in the AP view, near the grid's face)."""
    return dataclasses.replace(SubjectSpec.sample(seed), body=BodyParameters.mean())


@cache
def scene(seed: int) -> tuple[RenderedScene, dict[str, ProjectionView]]:
    views = case_views(seed, CONFIG, GRID)
    return render_scene(subject_spec(seed), GRID, views), views


def face_bands(view: ProjectionView, grid: VolumeGrid, world_axis: int, image_axis: int) -> list[tuple[float, float]]:
    """Per face of ``grid`` normal to ``world_axis``: the range of detector coordinate ``image_axis``
    (0: u, columns; 1: v, rows) its corners project to (the voxel box, half a voxel out)."""
    corners = torch.as_tensor(grid.corners_world(pad_vox=0.5))
    coordinate = view.project(corners)[0][:, image_axis].numpy()
    position = corners[:, world_axis].numpy()
    return [
        (coordinate[np.isclose(position, side)].min(), coordinate[np.isclose(position, side)].max())
        for side in (position.min(), position.max())
    ]


def step_ratio(image: np.ndarray, bands: list[tuple[float, float]], image_axis: int) -> float:
    """Median over the detector lines of the largest |second difference| across the bands, over
    the median of the lines' 90th percentile of it elsewhere."""
    # Lines along the image axis: (rows, cols) as is for columns, transposed for rows.
    lines = image if image_axis == 0 else image.T
    curvature = np.abs(np.diff(lines, n=2, axis=1))  # centred on positions 1 .. n - 2
    centres = np.arange(1, lines.shape[1] - 1)
    near = np.zeros(centres.size, bool)
    for low, high in bands:
        near |= (centres >= np.floor(low) - 1) & (centres <= np.ceil(high) + 1)
    assert near.any() and not near.all()
    return float(np.median(curvature[:, near].max(axis=1)) / np.median(np.percentile(curvature[:, ~near], 90, axis=1)))


@pytest.mark.parametrize("seed", SEEDS)
def test_no_step_along_the_projected_grid_faces(seed):
    rendered, views = scene(seed)
    spec = subject_spec(seed)
    body = render_radiographs(rendered.ct_hu, rendered.scene.grid, views, CONFIG)
    boxed = render_radiographs(render_subject(spec, GRID).ct_hu, GRID, views, CONFIG)
    # LAT: the y faces across the columns; AP: the x faces across the columns; both: z across rows.
    for view, world_axis, image_axis in (("LAT", 1, 0), ("AP", 0, 0), ("LAT", 2, 1), ("AP", 2, 1)):
        bands = face_bands(views[view], GRID, world_axis, image_axis)
        assert step_ratio(boxed[view], bands, image_axis) > 1.5 * STEP_RATIO, (view, world_axis)
        assert step_ratio(body[view], bands, image_axis) < STEP_RATIO, (view, world_axis)


def test_the_registration_grid_is_cut_from_the_scene():
    rendered, _ = scene(0)
    spec, block = subject_spec(0), rendered.scene.block
    direct = render_subject(spec, GRID, rendered.scene.body)
    np.testing.assert_array_equal(rendered.ct_hu[block], direct.ct_hu)
    np.testing.assert_array_equal(rendered.subject.ct_hu, direct.ct_hu)
    # The labels are the registered femur's only, as without the body.
    without_body = render_subject(spec, GRID)
    np.testing.assert_array_equal(rendered.subject.labels, without_body.labels)
    # Inside the grid the body changes nothing farther than skin + fat + a voxel from the skin.
    depth = -rendered.scene.body.sdf_on_grid(GRID).numpy()
    deep = depth > 2.0 + spec.body.subcutaneous_fat_mm + float(GRID.spacing_mm.max())
    assert deep.mean() > 0.8
    np.testing.assert_allclose(direct.ct_hu[deep], without_body.ct_hu[deep], atol=1e-3)
    # The same anatomy as the scene rendered on one lattice (no paste): only the fat planes,
    # interpolated from each grid's own lattice, differ.
    half_grid, half_block = right_half(rendered.scene)
    one_lattice = render_ct_hu(spec, half_grid, rendered.scene.body).numpy()[half_block]
    difference = np.abs(one_lattice - direct.ct_hu)
    assert difference.mean() < 2.0 and np.percentile(difference, 50) < 0.5
    # Left = right mirrored about the midline, a voxel face at the middle of the scene's columns.
    np.testing.assert_array_equal(rendered.ct_hu, rendered.ct_hu[::-1])
    width = rendered.scene.grid.shape[0] // 2
    face_x = rendered.scene.grid.affine[0, 3] + (width - 0.5) * rendered.scene.grid.spacing_mm[0]
    assert face_x == pytest.approx(rendered.scene.body.midline_x_mm)


def test_the_other_hip_appears_in_an_ap_radiograph():
    """An AP view centred on the midline with a detector wide enough for both hips."""
    spec = subject_spec(0)
    midline = spec.body_on(GRID).midline_x_mm
    isocentre = np.array([midline, *GRID.centre_world[1:]])
    wide = biplanar_pair(image_shape=(56, 110), pixel_spacing_mm=(3.72, 3.72), isocenter_mm=isocentre)["AP"]
    rendered = render_scene(spec, GRID, {"AP": wide})
    image = render_radiographs(rendered.ct_hu, rendered.scene.grid, {"AP": wide}, CONFIG)["AP"]
    # The scene is symmetric about the plane through the source and the detector's middle column.
    np.testing.assert_allclose(image, image[:, ::-1], rtol=1e-4, atol=1e-4)
    # The contralateral femur's shaft (the registered one's axis mirrored), 130 mm below the head
    # centre: along the detector row, above the soft tissue's smooth trend (a parabola fitted to
    # the line integrals 20 to 45 mm either side) by its cortices' extra attenuation.
    landmarks = rendered.subject.landmarks
    shaft = landmarks.shaft_axis_point_mm - 130.0 * landmarks.shaft_axis
    mirrored = np.array([2.0 * midline - shaft[0], shaft[1], shaft[2]])
    offsets = np.arange(-12, 13) * wide.carm.pixel_spacing_mm[1]  # mm along world x
    uv = wide.project(torch.tensor(mirrored + offsets[:, None] * np.array([1.0, 0.0, 0.0])))[0].numpy()
    row = round(float(uv[12, 1]))
    profile = np.array([image[row, round(float(u))] for u in uv[:, 0]])
    soft = np.abs(offsets) > 20.0
    trend = np.polyval(np.polyfit(offsets[soft], profile[soft], 2), 0.0)
    assert profile[12] > trend + 0.1
    # Without the scene that side of the detector sees air.
    boxed = render_radiographs(make_subject(0, "tiny").ct_hu, GRID, {"AP": wide}, CONFIG)["AP"]
    assert boxed[row, round(float(uv[12, 0]))] == 0.0 < profile[12]


def test_every_ray_across_the_body_stays_inside_the_scene():
    rendered, views = scene(1)
    grid = rendered.scene.grid
    corners = grid.corners_world()
    low_xy, high_xy = corners[:, :2].min(axis=0), corners[:, :2].max(axis=0)
    reach = visible_z_range(views, low_xy, high_xy)
    assert reach is not None
    # By brute force: points every 1 mm along every pixel ray, those over the scene's cross-section.
    heights = []
    for view in views.values():
        rays = view.pixel_rays(torch.float64).numpy().reshape(-1, 3)
        depths = np.arange(500.0, 1400.0, 1.0)
        points = view.source_world + depths[:, None, None] * rays[None]  # (depths, rays, 3)
        over = np.all((points[..., :2] >= low_xy) & (points[..., :2] <= high_xy), axis=-1)
        heights.append(points[..., 2][over])
    brute = np.concatenate(heights)
    assert reach[0] <= brute.min() < reach[0] + 1.0 and reach[1] - 1.0 < brute.max() <= reach[1]
    spacing_z = grid.spacing_mm[2]
    assert corners[:, 2].min() <= reach[0] - 1.5 * spacing_z and corners[:, 2].max() >= reach[1] + 1.5 * spacing_z


def test_scene_grid_is_the_ct_alone_as_before():
    seed = 3
    config = dataclasses.replace(CONFIG, scene="grid", geometry="mixed")
    case = simulate_case(seed, config)
    subject = make_subject(seed, "tiny", case_femur_shape(seed, config.shapes))
    views = case_views(seed, config, GRID)
    np.testing.assert_array_equal(case.ct_hu, subject.ct_hu)
    expected = render_radiographs(subject.ct_hu, GRID, views, config)
    masks = femur_masks(subject.labels, GRID, views, config.num_samples)
    for name in views:
        np.testing.assert_array_equal(case.radiographs[name], expected[name])
        np.testing.assert_array_equal(case.masks[name], masks[name])
    assert case.scene is None and "scene" not in case.record()
    assert "body" not in case.record()["parameters"]


def test_scene_body_cases_record_their_scene_and_keep_the_masks():
    body = simulate_case(3, CONFIG)
    grid = simulate_case(3, dataclasses.replace(CONFIG, scene="grid"))
    record = body.record()
    assert body.scene is not None
    assert record["scene"]["shape"] == list(body.scene.grid.shape)
    assert record["parameters"]["body"] == body.subject.spec.body.to_dict()
    for name in ("AP", "LAT"):
        np.testing.assert_array_equal(body.masks[name], grid.masks[name])
        assert body.radiographs[name].mean() > grid.radiographs[name].mean()


def test_the_radiographs_are_line_integrals_of_the_scene():
    """Against scipy's trilinear interpolation marched every 0.5 mm along the pixel rays."""
    case = simulate_case(2, CONFIG)
    rendered = render_scene(case.subject.spec, GRID, case.views)
    grid = rendered.scene.grid
    mu = MU_WATER_PER_MM * np.maximum(0.0, 1.0 + rendered.ct_hu.astype(np.float64) / 1000.0)
    for name, view in case.views.items():
        rays = view.pixel_rays(torch.float64).numpy()[::5, ::5]  # (rows, cols, 3) per mm of depth
        depths = np.arange(500.0, 1400.0, 0.5) + 0.25
        points = view.source_world + depths[:, None, None, None] * rays  # (depths, rows, cols, 3)
        vox = (points - grid.affine[:3, 3]) / grid.spacing_mm
        values = map_coordinates(mu, vox.reshape(-1, 3).T, order=1, mode="grid-constant", cval=0.0)
        expected = values.reshape(points.shape[:-1]).sum(axis=0) * 0.5 * np.linalg.norm(rays, axis=-1)
        np.testing.assert_allclose(case.radiographs[name][::5, ::5], expected, rtol=2e-3)


def test_scene_config_defaults_and_older_datasets():
    assert SimulationConfig().scene == "body"
    assert SimulationConfig.from_dict({"preset": "tiny"}).scene == "grid"  # made before scenes
    assert SimulationConfig.from_dict(SimulationConfig().to_dict()) == SimulationConfig()
    with pytest.raises(InputError, match="scene"):
        SimulationConfig(scene="room")


def test_simulate_passes_the_scene_option(tmp_path, monkeypatch):
    calls = []
    summary = SimpleNamespace(written=(), skipped=())
    monkeypatch.setattr(api, "simulate", lambda *args, **kwargs: calls.append(kwargs) or summary)
    arguments = ["simulate", "--out", str(tmp_path), "--n", "1", "--seed", "0", "--scene", "grid"]
    outcome = CliRunner().invoke(app, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert calls[0]["scene"] == "grid"


def test_a_grid_the_scene_cannot_mirror_is_refused():
    views = case_views(0, CONFIG, GRID)
    spec = SubjectSpec.sample(0)
    across_midline = VolumeGrid.from_spacing(GRID.shape, tuple(GRID.spacing_mm), (-100.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="midline"):
        render_scene(spec, across_midline, views)
    oblique = VolumeGrid(GRID.shape, GRID.affine[[1, 0, 2, 3]])
    with pytest.raises(ValueError, match="axis-aligned"):
        render_scene(spec, oblique, views)


def test_the_body_parameters_are_documented():
    text = DOCS.read_text()
    for name, spec in BodyParameters.ranges().items():
        row = re.search(rf"^\|\s*`{name}`\s*\|(.*)$", text, flags=re.MULTILINE)
        assert row, f"docs/data.md has no row for {name}"
        assert f"{spec.low:g}" in row.group(1) and f"{spec.high:g}" in row.group(1), name
