"""Simulated biplanar datasets: determinism, the radiograph and mask rules checked by an independent
ray integrator (scipy trilinear interpolation along rays built from the C-arm description of the
contract, not from the projection matrix), on-disk alignment, splits, resume, geometry, modes."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

import biplanar.data.simulate as simulate_module
from biplanar.config import PRESETS, load_config
from biplanar.data.femur_shape import FemurParameters
from biplanar.data.grid_presets import grid_preset
from biplanar.data.masks import MASK_MIN_PATH_MM
from biplanar.data.phantom import PoseRange
from biplanar.data.real_ct import REAL_CT
from biplanar.data.simulate import (
    SUBJECT_FILES,
    UNIFORM_FEMUR_HU_RANGE,
    SimulationConfig,
    case_subject,
    case_views,
    make_split,
    render_radiographs,
    simulate_case,
    simulate_dataset,
    split_sizes,
    subject_seed,
    with_uniform_femur,
)
from biplanar.errors import InputError
from biplanar.geometry import CarmPose, VolumeGrid, biplanar_pair
from biplanar.io.geometry_file import read_geometry
from biplanar.io.volumes import read_volume

TINY = SimulationConfig(preset="tiny")

MU_WATER_PER_MM = 0.02  # CONTRACT section 3
N_SUBJECTS, SEED = 4, 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simulated")
    simulate_dataset(out, N_SUBJECTS, SEED, TINY, progress=False)
    return out


def subject_dirs(root: Path) -> list[Path]:
    return sorted((root / "subjects").iterdir())


# --- an independent line integral ------------------------------------------------------------
def orthogonal_axes(lao_rao_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contract section 2 by hand: ``(d, u, v)`` of the AP (0) and LAT (90) C-arm positions."""
    axes = {
        0.0: ([0, 1, 0], [-1, 0, 0], [0, 0, -1]),  # source anterior, u to the left
        90.0: ([-1, 0, 0], [0, -1, 0], [0, 0, -1]),
    }  # source on the patient's left
    return tuple(np.array(a, dtype=float) for a in axes[lao_rao_deg])


def ray_integrals(
    volume: np.ndarray, grid: VolumeGrid, carm: CarmPose, image_shape: tuple[int, int], step_mm: float = 0.2
) -> np.ndarray:
    """``(rows, cols)`` integral of ``volume`` (trilinear, zero outside) from the source to each
    pixel centre, by scipy's ``map_coordinates`` at ``step_mm`` steps (midpoint rule)."""
    d, u_axis, v_axis = orthogonal_axes(carm.lao_rao_deg)
    source = np.asarray(carm.isocenter_mm) + carm.source_isocenter_mm * d
    rows, cols = image_shape
    r, c = np.meshgrid(np.arange(rows) - (rows - 1) / 2, np.arange(cols) - (cols - 1) / 2, indexing="ij")
    pixels = (
        source
        - carm.source_detector_mm * d
        + (c[..., None] * carm.pixel_spacing_mm[1]) * u_axis
        + (r[..., None] * carm.pixel_spacing_mm[0]) * v_axis
    )
    directions = (pixels - source) / np.linalg.norm(pixels - source, axis=-1, keepdims=True)
    # Every point of the padded box lies within `reach` of the isocentre, so within
    # source_isocenter +- reach of the source.
    reach = np.linalg.norm(grid.corners_world(pad_vox=1.0) - carm.isocenter_mm, axis=1).max()
    t = np.arange(carm.source_isocenter_mm - reach, carm.source_isocenter_mm + reach, step_mm)
    t += step_mm / 2
    points = source + t[:, None, None, None] * directions  # (T, rows, cols, 3) world mm
    vox = (points - grid.affine[:3, 3]) @ np.linalg.inv(grid.affine[:3, :3]).T
    values = map_coordinates(volume.astype(np.float64), vox.reshape(-1, 3).T, order=1, mode="grid-constant", cval=0.0)
    return values.reshape(t.size, rows, cols).sum(axis=0) * step_mm


def mu_from_hu(hu: np.ndarray) -> np.ndarray:
    return MU_WATER_PER_MM * np.maximum(0.0, 1.0 + hu / 1000.0)


# --- determinism ---------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_also_in_parallel(dataset, tmp_path):
    again = tmp_path / "again"
    summary = simulate_dataset(again, N_SUBJECTS, SEED, TINY, workers=2, progress=False)
    assert len(summary.written) == N_SUBJECTS and summary.skipped == ()
    for name in ("dataset.json", "split.json"):
        assert filecmp.cmp(dataset / name, again / name, shallow=False)
    for first, second in zip(subject_dirs(dataset), subject_dirs(again), strict=True):
        assert first.name == second.name
        assert sorted(p.name for p in first.iterdir()) == sorted(SUBJECT_FILES)
        _, mismatch, errors = filecmp.cmpfiles(first, second, SUBJECT_FILES, shallow=False)
        assert mismatch == [] and errors == []


def test_different_seeds_differ(dataset, tmp_path):
    other = tmp_path / "other"
    simulate_dataset(other, 1, SEED + 1, TINY, progress=False)
    for name in ("ct.nii.gz", "AP.npy", "LAT.npy", "subject.json"):
        assert not filecmp.cmp(
            dataset / "subjects/case_00000" / name, other / "subjects/case_00000" / name, shallow=False
        )
    first, second = (np.load(root / "subjects/case_00000/AP.npy") for root in (dataset, other))
    assert np.abs(first - second).max() > 0.1
    seeds = {subject_seed(s, i) for s in range(40) for i in range(40)}
    assert len(seeds) == 1600 and all(0 <= s < 2**63 for s in seeds)


# --- the radiographs and masks, by the independent integrator ---------------------------------
def test_radiographs_are_line_integrals_of_the_whole_ct(tmp_path):
    """With ``scene="grid"`` the radiographs project the CT written (the body scene: test_scene.py)."""
    simulate_dataset(tmp_path, 1, SEED, dataclasses.replace(TINY, scene="grid"), progress=False)
    folder = subject_dirs(tmp_path)[0]
    hu, grid = read_volume(folder / "ct.nii.gz")
    views = read_geometry(folder / "geometry.json")
    for name in ("AP", "LAT"):
        expected = ray_integrals(mu_from_hu(hu), grid, views[name].carm, views[name].image_shape)
        image = np.load(folder / f"{name}.npy")
        assert image.dtype == np.float32 and image.shape == (56, 40)
        np.testing.assert_allclose(image, expected, atol=2e-3 * expected.max())
        # Soft tissue counts: rays through the volume that miss the femur still see > 1.
        inside = (expected > 0.5 * expected.max()) & (np.load(folder / f"{name}_mask.npy") == 0)
        assert inside.sum() > 100 and image[inside].min() > 1.0


def test_femur_scene_projects_the_femur_alone_in_air(tmp_path):
    """``scene="femur"``: the radiographs are the line integrals of the CT's femur voxels in air; rays
    that miss the femur read 0; the CT, labels and masks written are those of ``scene="grid"``."""
    alone, grid_scene = tmp_path / "femur", tmp_path / "grid"
    simulate_dataset(alone, 1, SEED, dataclasses.replace(TINY, scene="femur"), progress=False)
    simulate_dataset(grid_scene, 1, SEED, dataclasses.replace(TINY, scene="grid"), progress=False)
    folder, grid_folder = subject_dirs(alone)[0], subject_dirs(grid_scene)[0]
    hu, grid = read_volume(folder / "ct.nii.gz")
    labels, _ = read_volume(folder / "labels.nii.gz")
    for name in ("ct.nii.gz", "labels.nii.gz", "AP_mask.npy", "LAT_mask.npy"):
        assert filecmp.cmp(folder / name, grid_folder / name, shallow=False), name
    views = read_geometry(folder / "geometry.json")
    for name in ("AP", "LAT"):
        femur_alone = np.where(labels == 1, mu_from_hu(hu), 0.0)
        expected = ray_integrals(femur_alone, grid, views[name].carm, views[name].image_shape)
        image = np.load(folder / f"{name}.npy")
        np.testing.assert_allclose(image, expected, atol=2e-3 * expected.max())
        misses = ray_integrals((labels == 1).astype(float), grid, views[name].carm, views[name].image_shape) == 0
        assert misses.sum() > 100 and np.abs(image[misses]).max() < 1e-6
        assert image.max() < np.load(grid_folder / f"{name}.npy").max()


def test_uniform_femur_renders_the_femur_at_its_recorded_ct_number(tmp_path):
    """``uniform_femur``: the radiographs project the CT with the femur's voxels at one CT number in
    the range, recorded in ``subject.json``; the CT written is the subject's, unchanged."""
    uniform, plain = tmp_path / "uniform", tmp_path / "plain"
    simulate_dataset(uniform, 1, SEED, dataclasses.replace(TINY, scene="grid", uniform_femur=True), progress=False)
    simulate_dataset(plain, 1, SEED, dataclasses.replace(TINY, scene="grid"), progress=False)
    folder = subject_dirs(uniform)[0]
    assert filecmp.cmp(folder / "ct.nii.gz", subject_dirs(plain)[0] / "ct.nii.gz", shallow=False)
    femur_hu = json.loads((folder / "subject.json").read_text())["uniform_femur_hu"]
    assert UNIFORM_FEMUR_HU_RANGE[0] <= femur_hu <= UNIFORM_FEMUR_HU_RANGE[1]
    hu, grid = read_volume(folder / "ct.nii.gz")
    labels, _ = read_volume(folder / "labels.nii.gz")
    views = read_geometry(folder / "geometry.json")
    for name in ("AP", "LAT"):
        expected = ray_integrals(mu_from_hu(np.where(labels == 1, femur_hu, hu)), grid, views[name].carm, (56, 40))
        np.testing.assert_allclose(np.load(folder / f"{name}.npy"), expected, atol=2e-3 * expected.max())


def test_with_uniform_femur_writes_only_the_registration_grids_femur():
    """Inside a larger scene only the femur voxels of the registration grid's block change."""
    scene_hu = np.full((6, 5, 4), 40.0, dtype=np.float32)
    labels = np.zeros((2, 3, 2), dtype=np.uint8)
    labels[1, 2, 1] = 1  # the femur
    labels[0, 0, 0] = 2  # another label
    block = (slice(3, 5), slice(1, 4), slice(2, 4))
    uniform = with_uniform_femur(scene_hu, labels, block, 900.0)
    assert uniform[4, 3, 3] == 900.0 and (uniform != 900.0).sum() == uniform.size - 1
    assert (scene_hu == 40.0).all()  # the input is not changed


def test_masks_follow_the_path_length_rule(dataset):
    for folder in subject_dirs(dataset)[:2]:
        labels, grid = read_volume(folder / "labels.nii.gz")
        views = read_geometry(folder / "geometry.json")
        for name in ("AP", "LAT"):
            path_mm = ray_integrals((labels == 1).astype(float), grid, views[name].carm, views[name].image_shape)
            mask = np.load(folder / f"{name}_mask.npy")
            assert set(np.unique(mask)) == {0.0, 1.0}
            decided = np.abs(path_mm - MASK_MIN_PATH_MM) > 0.05
            assert decided.mean() > 0.99
            np.testing.assert_array_equal(mask[decided], path_mm[decided] > MASK_MIN_PATH_MM)
            assert 0.05 < mask.mean() < 0.6
            np.testing.assert_array_equal(
                np.load(folder / f"{name}_masked.npy"), np.load(folder / f"{name}.npy") * mask
            )


def test_ct_and_labels_are_aligned_on_disk(dataset):
    expected = grid_preset("tiny")
    for folder in subject_dirs(dataset):
        ct, labels = (nib.load(folder / name) for name in ("ct.nii.gz", "labels.nii.gz"))
        np.testing.assert_array_equal(ct.affine, labels.affine)
        np.testing.assert_allclose(ct.affine, expected.affine, atol=1e-5)
        assert ct.shape == labels.shape == expected.shape
        assert ct.get_data_dtype() == np.float32 and labels.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(labels.dataobj))) == {0, 1}
        record = json.loads((folder / "subject.json").read_text())
        assert record["subject_id"] == folder.name
        assert record["seed"] == subject_seed(SEED, record["index"])
        head = np.array(record["landmarks"]["head_centre_mm"])
        head_vox = np.round(np.linalg.inv(ct.affine) @ [*head, 1.0])[:3].astype(int)
        assert np.asarray(labels.dataobj)[tuple(head_vox)] == 1  # the head centre is femur


# --- splits ----------------------------------------------------------------------------------
def test_split_file_is_disjoint_covering_and_deterministic(dataset):
    split = json.loads((dataset / "split.json").read_text())
    ids = [name for part in split.values() for name in part]
    assert sorted(ids) == [p.name for p in subject_dirs(dataset)] and len(set(ids)) == len(ids)
    assert {k: len(v) for k, v in split.items()} == split_sizes(N_SUBJECTS)
    assert split == make_split(N_SUBJECTS, SEED)


@pytest.mark.parametrize("n, sizes", [(315, (235, 40, 40)), (100, (74, 13, 13)), (3, (1, 1, 1)), (1, (1, 0, 0))])
def test_split_proportions_are_the_papers(n, sizes):
    assert tuple(split_sizes(n).values()) == sizes
    split = make_split(n, 5)
    assert sorted(name for names in split.values() for name in names) == sorted(f"case_{i:05d}" for i in range(n))
    if n > 10:
        assert make_split(n, 6) != split


# --- resume ----------------------------------------------------------------------------------
def test_interrupted_run_leaves_complete_subjects_and_resumes(dataset, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    calls = []

    def failing_write_geometry(path, views):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run while the 2nd subject is written
        original_write_geometry(path, views)

    original_write_geometry = simulate_module.write_geometry
    monkeypatch.setattr(simulate_module, "write_geometry", failing_write_geometry)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(out, 3, SEED, TINY, progress=False)
    monkeypatch.undo()
    assert [p.name for p in (out / "subjects").iterdir()] == ["case_00000"]
    assert not (out / "split.json").exists()

    # Also a subject folder that lost a file, and a stale partial folder of a killed process.
    (out / "subjects/case_00000/LAT.npy").unlink()
    (out / "subjects/.case_00002.99999.partial").mkdir()
    summary = simulate_dataset(out, 3, SEED, TINY, progress=False)
    assert summary.written == ("case_00000", "case_00001", "case_00002") and summary.skipped == ()

    kept = {p.name: p.stat().st_mtime_ns for p in (out / "subjects/case_00001").iterdir()}
    summary = simulate_dataset(out, 4, SEED, TINY, progress=False)
    assert summary.skipped == ("case_00000", "case_00001", "case_00002")
    assert summary.written == ("case_00003",)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "subjects/case_00001").iterdir()} == kept
    assert [p.name for p in subject_dirs(out)] == [p.name for p in subject_dirs(dataset)]
    for first, second in zip(subject_dirs(dataset), subject_dirs(out), strict=True):
        same, _, _ = filecmp.cmpfiles(first, second, SUBJECT_FILES, shallow=False)
        assert same == list(SUBJECT_FILES)
    assert filecmp.cmp(dataset / "split.json", out / "split.json", shallow=False)


def test_resume_refuses_another_seed_or_config(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    with pytest.raises(InputError, match="dataset.json: the dataset there was made with seed 11"):
        simulate_dataset(copy, N_SUBJECTS, SEED + 1, TINY, progress=False)
    with pytest.raises(InputError, match="choose another output folder"):
        simulate_dataset(copy, N_SUBJECTS, SEED, dataclasses.replace(TINY, mode="poisson"), progress=False)


def test_bad_arguments_raise():
    with pytest.raises(InputError, match="preset: expected one of lite, paper, tiny, got 'huge'"):
        SimulationConfig(preset="huge")
    with pytest.raises(InputError, match="geometry: expected one of"):
        SimulationConfig(geometry="oblique")
    with pytest.raises(InputError, match=r"n: expected a number of subjects in 1\.\.1000000, got 0"):
        simulate_dataset("unused", 0, 1)
    with pytest.raises(InputError, match=r"n: expected a number of subjects in 1\.\.1000000, got 1000000000000"):
        simulate_dataset("unused", 10**12, 1)  # refused before the ids are listed
    with pytest.raises(InputError, match=r"workers: expected a number of processes in 1\.\.256"):
        simulate_dataset("unused", 2, 1, workers=10**6)
    with pytest.raises(InputError, match="seed: expected >= 0"):
        simulate_dataset("unused", 2, -1)
    with pytest.raises(InputError, match=r"pose_angle_deg in \[0, 20.0\].*got .*, 45.0, 3.0"):
        SimulationConfig(pose_angle_deg=45.0)
    with pytest.raises(InputError, match=r"pose_shift_mm in \[0, 12.0\].*got .*, 10.0, -1.0"):
        SimulationConfig(pose_shift_mm=-1.0)


def test_bone_contrast_adds_the_line_integral_of_the_bone_and_changes_nothing_else():
    plain_config = dataclasses.replace(TINY, scene="grid")
    plain = simulate_case(SEED, plain_config)
    steep = simulate_case(SEED, dataclasses.replace(plain_config, bone_contrast=3.0))
    factor = steep.bone_contrast
    assert 1.0 < factor <= 3.0 and steep.record()["bone_contrast"] == factor
    assert "bone_contrast" not in plain.record() and plain.bone_contrast == 1.0
    np.testing.assert_array_equal(steep.subject.ct_hu, plain.subject.ct_hu)
    for view in ("AP", "LAT"):
        np.testing.assert_array_equal(steep.masks[view], plain.masks[view])
    # the extra line integral is that of (factor - 1) x the attenuation of the voxels above 350 HU,
    # rendered here as the CT numbers whose attenuation it is (hu_to_mu is linear above -1000 HU)
    hu = plain.subject.ct_hu
    extra_hu = np.where(hu > 350.0, (factor - 1.0) * (1000.0 + hu), 0.0) - 1000.0
    extra = render_radiographs(extra_hu, plain.subject.grid, plain.views, plain_config)
    for view in ("AP", "LAT"):
        difference = steep.radiographs[view] - plain.radiographs[view]
        assert extra[view].max() > 0.05 * plain.radiographs[view].max()  # the femur is there
        np.testing.assert_allclose(difference, extra[view], atol=1e-4 * plain.radiographs[view].max())
    with pytest.raises(InputError, match=r"bone_contrast in \[1, 4.0\], .* got .*, 0.5, 1.0, 0.0"):
        SimulationConfig(bone_contrast=0.5)


def test_shape_spread_widens_the_shape_model_femurs_only():
    wide, plain = SimulationConfig(shapes="ssm", shape_spread=2.0), SimulationConfig(shapes="ssm")
    wide_weights = np.array(case_subject(SEED, wide).femur.mode_weights)
    plain_weights = np.array(case_subject(SEED, plain).femur.mode_weights)
    assert np.abs(wide_weights).max() <= 3.0
    assert np.abs(wide_weights).mean() > 1.5 * np.abs(plain_weights).mean()
    phantom = SimulationConfig(shapes="phantom")
    assert case_subject(SEED, dataclasses.replace(phantom, shape_spread=2.0)) == case_subject(SEED, phantom)
    recorded = plain.to_dict()
    del recorded["shape_spread"]  # a dataset made before the option: the model's own population
    assert SimulationConfig.from_dict(recorded) == plain
    with pytest.raises(InputError, match=r"shape_spread in \(0, 3.0\] and .* got .*, 0.0, 0.0$"):
        SimulationConfig(shape_spread=0.0)


def test_off_model_moves_the_shape_model_femurs_only_by_the_case_seed():
    plain, moved = SimulationConfig(shapes="ssm"), SimulationConfig(shapes="ssm", off_model_mm=1.5)
    femur = case_subject(SEED, moved).femur
    assert femur == dataclasses.replace(case_subject(SEED, plain).femur, off_model_rms_mm=1.5, off_model_seed=SEED)
    phantom = SimulationConfig(shapes="phantom")
    assert case_subject(SEED, dataclasses.replace(phantom, off_model_mm=1.5)) == case_subject(SEED, phantom)
    recorded = plain.to_dict()
    del recorded["off_model_mm"]  # a dataset made before the option: femurs on the model
    assert SimulationConfig.from_dict(recorded) == plain
    with pytest.raises(InputError, match=r"off_model_mm in \[0, 3.0\] expected, got .*, 3.5$"):
        SimulationConfig(off_model_mm=3.5)


def test_configs_from_before_the_pose_range_keep_the_trained_range():
    recorded = SimulationConfig().to_dict()
    del recorded["pose_angle_deg"], recorded["pose_shift_mm"]
    assert SimulationConfig.from_dict(recorded).pose_range == PoseRange(10.0, 3.0)


# --- geometry --------------------------------------------------------------------------------
def test_generalized_angles_are_within_30_degrees_of_0_and_90(tmp_path):
    config = dataclasses.replace(TINY, geometry="generalized")
    simulate_dataset(tmp_path, 4, 3, config, progress=False)
    angles = []
    for folder in subject_dirs(tmp_path):
        views = read_geometry(folder / "geometry.json")  # also checks matrix == C-arm
        ap, lat = views["AP"].carm, views["LAT"].carm
        assert -30.0 <= ap.lao_rao_deg <= 30.0 and 60.0 <= lat.lao_rao_deg <= 120.0
        assert ap.cranio_caudal_deg == lat.cranio_caudal_deg == 0.0
        assert ap.isocenter_mm == lat.isocenter_mm == (0.0, 0.0, 0.0)  # the grid's centre
        assert views["AP"].image_shape == (56, 40) and ap.pixel_spacing_mm == (3.72, 3.72)
        angles.append((ap.lao_rao_deg, lat.lao_rao_deg))
    assert len(set(angles)) == 4
    assert simulate_case(subject_seed(3, 0), config).views["AP"].carm.lao_rao_deg == angles[0][0]


def test_mixed_geometry_draws_both_kinds_from_the_case_seed():
    config = dataclasses.replace(TINY, geometry="mixed")
    grid = grid_preset("tiny")
    orthogonal = [
        case_views(subject_seed(5, index), config, grid)["LAT"].carm.lao_rao_deg == 90.0 for index in range(40)
    ]
    assert 10 <= sum(orthogonal) <= 30  # about half of each kind
    assert orthogonal == [
        case_views(subject_seed(5, index), config, grid)["LAT"].carm.lao_rao_deg == 90.0 for index in range(40)
    ]


def test_orthogonal_views_are_ap_0_and_lat_90(dataset):
    views = read_geometry(subject_dirs(dataset)[0] / "geometry.json")
    assert (views["AP"].carm.lao_rao_deg, views["LAT"].carm.lao_rao_deg) == (0.0, 90.0)
    np.testing.assert_allclose(views["LAT"].source_world, [-925.0, 0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize(
    "preset, shape, spacing", [("paper", (224, 160), 0.93), ("lite", (112, 80), 1.86), ("tiny", (56, 40), 3.72)]
)
def test_detector_presets_keep_the_field_of_view(preset, shape, spacing):
    config = SimulationConfig(preset=preset)
    assert config.image_shape == shape
    np.testing.assert_allclose(config.pixel_spacing_mm, (spacing, spacing))


@pytest.mark.parametrize("preset", PRESETS)
def test_the_detector_of_a_preset_is_its_config_presets(preset):
    geometry = load_config(preset).geometry
    config = SimulationConfig(preset=preset)
    assert config.image_shape == tuple(geometry.image_shape)
    assert config.pixel_spacing_mm == (geometry.pixel_spacing_mm, geometry.pixel_spacing_mm)


def test_a_given_subject_is_rendered_in_place_of_the_drawn_one():
    config = dataclasses.replace(TINY, scene="grid")
    drawn = simulate_case(5, config)
    spec = case_subject(5, config)
    again = simulate_case(5, config, spec)
    np.testing.assert_array_equal(again.radiographs["AP"], drawn.radiographs["AP"])
    other = simulate_case(5, config, dataclasses.replace(spec, femur=FemurParameters.mean()))
    for name, view in drawn.views.items():  # the seed's views, whatever the subject
        np.testing.assert_array_equal(other.views[name].source_world, view.source_world)
    assert not np.array_equal(other.subject.labels, drawn.subject.labels)


# --- modes -----------------------------------------------------------------------------------
def test_poisson_noise_has_the_quantum_variance():
    photons = 1e4
    # The CT alone: through the body's 40 cm (scene "body") a lateral ray leaves ~1 photon of 1e4.
    clean = simulate_case(5, dataclasses.replace(TINY, scene="grid"))
    noisy = simulate_case(5, dataclasses.replace(TINY, scene="grid", mode="poisson", photons=photons))
    np.testing.assert_array_equal(noisy.ct_hu, clean.ct_hu)
    z = np.concatenate(
        [
            ((noisy.radiographs[v] - clean.radiographs[v]) / np.sqrt(np.exp(clean.radiographs[v]) / photons)).ravel()
            for v in ("AP", "LAT")
        ]
    )
    assert np.all(np.isfinite(z))
    # Delta method: Var(-log(N / N0)) = exp(L) / N0 for N ~ Poisson(N0 exp(-L)).
    assert abs(np.mean(z**2) - 1.0) < 0.1 and abs(np.mean(z)) < 0.1
    np.testing.assert_array_equal(noisy.masks["AP"], clean.masks["AP"])


def test_polychromatic_radiographs_are_finite_and_follow_the_line_integral():
    clean = simulate_case(5, TINY)
    poly = simulate_case(5, dataclasses.replace(TINY, mode="polychromatic"))
    for view in ("AP", "LAT"):
        image, reference = poly.radiographs[view], clean.radiographs[view]
        assert np.all(np.isfinite(image)) and image.max() > 0.5
        assert np.corrcoef(image.ravel(), reference.ravel())[0, 1] > 0.95


# --- real anatomy ----------------------------------------------------------------------------
def test_radiographs_of_a_real_ct():
    hu, grid = read_volume(REAL_CT)
    views = biplanar_pair(
        image_shape=TINY.image_shape, pixel_spacing_mm=TINY.pixel_spacing_mm, isocenter_mm=grid.centre_world
    )
    images = render_radiographs(hu, grid, views, TINY)
    for name, image in images.items():
        assert image.shape == (56, 40) and np.all(np.isfinite(image))
        assert image.std() > 0.1 and image.max() > 3.0  # an abdomen: 4 to 5.5
        expected = ray_integrals(mu_from_hu(hu), grid, views[name].carm, views[name].image_shape, step_mm=0.5)
        np.testing.assert_allclose(image, expected, atol=5e-3 * expected.max())
