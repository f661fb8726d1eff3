"""``register`` on what a clinic brings (docs/contract.md section 7): DICOM files with their geometry,
another detector, transmission values, no masks, a left hip; and the refusals."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.data.clinical import write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed
from biplanar.evaluation.metrics import point_surface_distances_mm
from biplanar.evaluation.self_intersection import self_intersections
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.dicom import write_dicom_radiograph
from biplanar.io.geometry_file import write_geometry
from biplanar.io.images import write_image
from biplanar.io.volumes import write_volume
from biplanar.registration import register
from biplanar.training.checkpoints import bundled_model_path

HELD_OUT_SEED = 4141  # a dataset seed no training set used
LARGE = ((448, 320), (0.6, 0.6))  # a clinic's detector: (rows, cols), mm
AIR_COUNTS = 60000.0  # a lateral view through the body reaches L = 10.5: the detector counts that far
runner = CliRunner()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A held-out subject, its labels (right and mirrored left) and its radiographs on a 448 x 320 detector
    (its whole-body scene, as ``simulate`` renders it)."""
    folder = tmp_path_factory.mktemp("clinic")
    config = SimulationConfig(preset="lite", geometry="orthogonal")
    simulated = simulate_case(subject_seed(HELD_OUT_SEED, 0), config)
    grid = simulated.grid
    write_volume(folder / "labels.nii.gz", simulated.labels, grid)
    write_volume(folder / "labels_left.nii.gz", np.ascontiguousarray(simulated.labels[::-1]), grid)
    views = biplanar_pair(0.0, 90.0, *LARGE, isocenter_mm=grid.centre_world)
    rendered = render_scene(simulated.subject.spec, grid, views)
    images = render_radiographs(rendered.ct_hu, rendered.scene.grid, views, config)
    return {"folder": folder, "simulated": simulated, "config": config, "large_views": views, "large": images}


def dice_of(out) -> float:
    return json.loads((out / "report.json").read_text())["dice"]


def test_two_dicom_files_alone(case, tmp_path):
    # Transmission counts (LIN, MONOCHROME1) on a 448 x 320 detector at 0.6 mm, the geometry in the
    # tags, the columns stored mirrored (Patient Orientation R\F), no geometry file, no masks. No ray
    # misses the body on this detector, so the unattenuated level cannot be read off the image: given.
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name, position, orientation in (("AP", "AP", "R\\F"), ("LAT", "RL", "P\\F")):
        counts = np.clip(np.round(AIR_COUNTS * np.exp(-case["large"][name].astype(np.float64))), 1.0, 65535.0)
        stored = counts[:, ::-1] if orientation.startswith("R") else counts
        write_dicom_radiograph(
            folder / f"{name}.dcm",
            stored,
            view_position=position,
            imager_pixel_spacing_mm=LARGE[1],
            photometric="MONOCHROME1",
            intensity_relationship="LIN",
            intensity_sign=1,
            patient_orientation=orientation,
            image_laterality="R",
        )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "register",
            "--ap",
            str(folder / "AP.dcm"),
            "--lat",
            str(folder / "LAT.dcm"),
            "--out",
            str(out),
            "--truth-labels",
            str(case["folder"] / "labels.nii.gz"),
            "--air-level",
            str(AIR_COUNTS),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["dice"] > 0.92 and report["side"] == "right" and not report["quality"]["flag"]
    assert report["inputs"]["model_choice"]["model"] == "lite"  # a body around the femur
    assumptions = report["inputs"]["assumptions"]
    assert assumptions["masks"] == "segmented" and assumptions["side_source"] == "DICOM laterality"
    ap = assumptions["views"]["AP"]
    assert ap["geometry"] == "DICOM tags" and ap["resampled"]["user_shape"] == [448, 320] and ap["flips"] == [1]
    # The masks and overlays are on the user's pixels, in the file's orientation.
    mask = np.array(Image.open(out / "AP_mask.png")) > 0
    assert mask.shape == (448, 320)
    truth = femur_masks(case["simulated"].labels, case["simulated"].grid, case["large_views"])["AP"][:, ::-1] > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
    assert Image.open(out / "overlay_AP.png").size[1] / Image.open(out / "overlay_AP.png").size[0] == 448 / 320


def test_a_femur_alone_in_air_goes_to_the_bone_in_air_network(case, tmp_path):
    # The held-out subject's femur voxels alone in air (the ``femur`` scene), true masks, not refined:
    # without --model register picks lite_alone, which fits it better than the body network does.
    simulated = simulate_case(subject_seed(HELD_OUT_SEED, 0), dataclasses.replace(case["config"], scene="femur"))
    folder = tmp_path / "alone"
    write_view_files(folder, simulated.views, simulated.radiographs, simulated.masks)
    write_volume(folder / "labels.nii.gz", simulated.labels, simulated.grid)
    reports = {
        name: register(
            folder / "geometry.json",
            folder / "AP.npy",
            folder / "LAT.npy",
            tmp_path / name,
            model=model,
            ap_mask=folder / "AP_mask.npy",
            lat_mask=folder / "LAT_mask.npy",
            truth_labels=folder / "labels.nii.gz",
            refine=0,
            progress=False,
        ).report
        for name, model in (("chosen", None), ("lite", bundled_model_path("lite")))
    }
    choice = reports["chosen"]["inputs"]["model_choice"]
    assert choice["model"] == "lite_alone" and max(choice["surround_level"].values()) < 0.05
    assert reports["chosen"]["inputs"]["model"] == str(bundled_model_path("lite_alone"))
    page = (tmp_path / "chosen" / "report.html").read_text(encoding="utf-8")
    assert "network: the bundled lite_alone (a bone in air)" in page
    assert reports["chosen"]["dice"] > reports["lite"]["dice"] + 0.03


def register_rendered(case, folder, out, side="right", ap_angle=0.0, lat_angle=90.0, masks=True) -> dict:
    """The case's femur (mirrored into a left one for ``side="left"``) rendered on its grid along a C-arm
    pair on the model's detector, registered with its true masks or without, not refined; the report."""
    simulated, config = case["simulated"], case["config"]
    grid = simulated.grid
    ct, labels = simulated.ct_hu, simulated.labels
    if side == "left":
        ct, labels = np.ascontiguousarray(ct[::-1]), np.ascontiguousarray(labels[::-1])
    views = biplanar_pair(ap_angle, lat_angle, config.image_shape, config.pixel_spacing_mm, grid.centre_world)
    images, true_masks = render_radiographs(ct, grid, views, config), femur_masks(labels, grid, views)
    folder.mkdir()
    write_geometry(folder / "geometry.json", views)
    for name in views:
        write_image(folder / f"{name}.npy", images[name])
        write_image(folder / f"{name}_mask.npy", true_masks[name])
    given = {"ap_mask": folder / "AP_mask.npy", "lat_mask": folder / "LAT_mask.npy"} if masks else {}
    result = register(
        folder / "geometry.json",
        folder / "AP.npy",
        folder / "LAT.npy",
        out,
        truth_labels=case["folder"] / ("labels_left.nii.gz" if side == "left" else "labels.nii.gz"),
        side=side,
        refine=0,  # the network's own result, which the views' orientation decides
        progress=False,
        **given,
    )
    return result.report


def test_a_left_femur_registers_as_the_right_one_does(case, tmp_path):
    grid = case["simulated"].grid
    outcomes = {
        side: register_rendered(case, tmp_path / side, tmp_path / f"out_{side}", side, lat_angle=lat)
        for side, lat in (("right", 90.0), ("left", -90.0))
    }
    # The mirror is exact: the left femur's registration is the right one's, mirrored.
    assert outcomes["left"]["dice"] == pytest.approx(outcomes["right"]["dice"], abs=0.005)
    assert outcomes["left"]["side"] == "left" and outcomes["left"]["dice"] > 0.92
    head_right = np.array(outcomes["right"]["hip"]["landmarks"]["head_centre_mm"])
    head_left = np.array(outcomes["left"]["hip"]["landmarks"]["head_centre_mm"])
    centre_x = grid.centre_world[0]
    np.testing.assert_allclose(head_left, [2 * centre_x - head_right[0], *head_right[1:]], atol=0.5)
    # landmarks.json and the 3D Slicer markups hold the same head centre, in the patient's world.
    landmarks = json.loads((tmp_path / "out_left" / "landmarks.json").read_text())
    assert landmarks["side"] == "left" and set(landmarks["axes"]) == set(landmarks["axis_definitions"])
    np.testing.assert_allclose(landmarks["points_mm"]["femoral_head_centre"], head_left)
    markups = json.loads((tmp_path / "out_left" / "landmarks.mrk.json").read_text())["markups"][0]
    assert markups["coordinateSystem"] == "RAS" and markups["coordinateUnits"] == "mm"
    head = next(point for point in markups["controlPoints"] if point["label"] == "femoral_head_centre")
    np.testing.assert_allclose(head["position"], head_left)


@pytest.mark.parametrize(
    "side, ap_angle, lat_angle, masks",
    [
        ("right", 0.0, -90.0, True),  # a right hip's LAT from its lateral side (View Position LL)
        ("right", 180.0, 90.0, True),  # a PA
        ("left", 0.0, 90.0, True),  # a left hip's LAT from its lateral side (RL), mirrored: as the first
        ("left", 0.0, 90.0, False),  # the same, segmented
    ],
)
def test_views_from_the_other_side_register_as_the_learnt_ones(case, tmp_path, side, ap_angle, lat_angle, masks):
    """The network learnt AP sources in front and LAT sources on the right femur's medial side; a view
    from the other side is shown to it reversed (biplanar.geometry.facing). Shown as it comes, such a
    LAT gave Dice 0.48-0.85 and a PA 0.58-0.70 on five held-out phantoms."""
    learnt = register_rendered(case, tmp_path / "learnt", tmp_path / "out_learnt", masks=masks)
    other = register_rendered(case, tmp_path / "other", tmp_path / "out_other", side, ap_angle, lat_angle, masks)
    # Segmented masks of this grid-only rendering (box edges, no body) cost both sides about alike
    # (0.87-0.88); the reversed side must not be worse by more than 0.01 (it may be better: v11 scores
    # it 0.010 higher).
    assert other["dice"] >= learnt["dice"] - 0.01 and other["dice"] > (0.92 if masks else 0.85)
    assumed = other["inputs"]["assumptions"]["views"]
    lateral_source = lat_angle == (90.0 if side == "left" else -90.0)
    assert [assumed[name]["source_reversed"] for name in ("AP", "LAT")] == [ap_angle == 180.0, lateral_source]
    # Segmented, both sides end under Dice 0.90 here, where the quality block's silhouette check may
    # rightly flag them (LAT silhouette Dice 0.95-0.96).
    assert not other["quality"]["flag"] or not masks


def test_a_long_source_distance_registers_as_the_paper_one(case, tmp_path):
    """Source-detector 1500 mm, source-isocentre 1350 mm, the 448 x 320 detector, no masks: resampled with
    the model's pixel size at the isocentre, the femur covers as many pixels as in training. (At the
    model's focal length instead it covered 925/1350 as many: Dice 0.755 on 6 held-out subjects,
    examples/source_distances.py.)"""
    simulated, config = case["simulated"], case["config"]
    grid = simulated.grid
    far = {
        name: ProjectionView.from_carm(
            CarmPose(angle, 0.0, 1350.0, 1500.0, LARGE[1], tuple(grid.centre_world)), LARGE[0]
        )
        for name, angle in (("AP", 0.0), ("LAT", 90.0))
    }
    rendered = render_scene(simulated.subject.spec, grid, far)
    reports = {}
    for name, views, images in (
        ("paper", case["large_views"], case["large"]),
        ("far", far, render_radiographs(rendered.ct_hu, rendered.scene.grid, far, config)),
    ):
        write_view_files(tmp_path / name, views, images, femur_masks(simulated.labels, grid, views))  # masks unused
        reports[name] = register(
            tmp_path / name / "geometry.json",
            tmp_path / name / "AP.npy",
            tmp_path / name / "LAT.npy",
            tmp_path / f"out_{name}",
            truth_labels=case["folder"] / "labels.nii.gz",
            progress=False,
        ).report
    assert reports["far"]["dice"] == pytest.approx(reports["paper"]["dice"], abs=0.01)
    assert reports["far"]["dice"] > 0.92 and not reports["far"]["quality"]["flag"]


def test_a_transmission_array_is_recognised_by_auto(case, tmp_path):
    simulated = case["simulated"]
    folder = tmp_path / "arrays"
    folder.mkdir()
    write_geometry(folder / "geometry.json", simulated.views)
    for name in simulated.views:
        write_image(folder / f"{name}.npy", (AIR_COUNTS * np.exp(-simulated.radiographs[name])).astype(np.float32))
        write_image(folder / f"{name}_mask.npy", simulated.masks[name])
    result = register(
        folder / "geometry.json",
        folder / "AP.npy",
        folder / "LAT.npy",
        tmp_path / "out",
        ap_mask=folder / "AP_mask.npy",
        lat_mask=folder / "LAT_mask.npy",
        truth_labels=case["folder"] / "labels.nii.gz",
        progress=False,
    )
    route = result.report["inputs"]["assumptions"]["views"]["AP"]["intensity"]
    assert route["route"] == "transmission" and route["air_level"]["source"] == "estimated"
    assert result.report["dice"] > 0.92


@pytest.mark.parametrize(
    "defect, message",
    [
        ("no geometry", "AP.npy: not a DICOM file, so its geometry must come from --geometry"),
        ("constant", "AP.npy: the image is constant"),
        ("inverted", "AP.npy: the radiograph anti-correlates with the atlas's DRR"),
        ("mask shape", "AP_mask.npy: mask shape [10, 10] differs from its radiograph's [112, 80]"),
        ("bad side", "--side: expected one of right, left, got 'up'"),
    ],
)
def test_bad_clinical_inputs_are_refused_in_one_line(case, tmp_path, defect, message):
    simulated = case["simulated"]
    write_view_files(tmp_path, simulated.views, simulated.radiographs, simulated.masks)
    arguments = {
        "geometry": tmp_path / "geometry.json",
        "ap_mask": tmp_path / "AP_mask.npy",
        "lat_mask": tmp_path / "LAT_mask.npy",
    }
    if defect == "no geometry":
        arguments["geometry"] = None
    elif defect == "constant":
        write_image(tmp_path / "AP.npy", np.full((112, 80), 3.0, dtype=np.float32))
    elif defect == "inverted":  # bone dark; noise, so that the air is no flat maximum (that would be "clipped")
        noise = np.random.default_rng(0).normal(0.0, 0.01, (112, 80))
        write_image(tmp_path / "AP.npy", (5.0 - simulated.radiographs["AP"] + noise).astype(np.float32))
        arguments["intensity"] = "line-integral"  # auto would read it as a transmission image, rightly
    elif defect == "mask shape":
        write_image(tmp_path / "AP_mask.npy", np.ones((10, 10), dtype=np.float32))
    else:
        arguments["side"] = "up"
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")) as raised:
        register(
            ap=tmp_path / "AP.npy",
            lat=tmp_path / "LAT.npy",
            out=tmp_path / "out",
            progress=False,
            **arguments,
        )
    assert raised.type.__name__ == "InputError" and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_surfaces_are_the_atlas_mesh_carried_smooth_and_in_correspondence(case, tmp_path):
    # Two held-out patients: surface.stl is the atlas's smooth mesh carried through each registration,
    # so both have the atlas's vertices and faces; it is closed, does not cross itself, is within 0.5 mm
    # of the warped label map's own surface (label_surface.stl) on average inside the grid, and at
    # least 3x smoother.
    config = case["config"]
    meshes = []
    for index in (1, 2):
        simulated = simulate_case(subject_seed(HELD_OUT_SEED, index), config)
        folder = tmp_path / f"patient_{index}"
        write_view_files(folder, simulated.views, simulated.radiographs, simulated.masks)
        out = tmp_path / f"out_{index}"
        register(
            folder / "geometry.json",
            folder / "AP.npy",
            folder / "LAT.npy",
            out,
            ap_mask=folder / "AP_mask.npy",
            lat_mask=folder / "LAT_mask.npy",
            progress=False,
        )
        surface, labels = trimesh.load(out / "surface.stl"), trimesh.load(out / "label_surface.stl")
        assert surface.is_watertight and surface.volume > 0
        assert self_intersections(surface.vertices, surface.faces).shape == (0, 2)
        # Where the shaft leaves the grid the label map is cut and the carried mesh is not: compare inside.
        grid = simulated.grid
        vox = grid.world_to_vox(torch.as_tensor(np.asarray(surface.vertices))).numpy()
        inside = np.all((vox >= 1.0) & (vox <= np.array(grid.shape) - 2.0), axis=1)
        assert point_surface_distances_mm(np.asarray(surface.vertices)[inside], labels).mean() <= 0.5
        assert 3 * surface.face_adjacency_angles.mean() <= labels.face_adjacency_angles.mean()
        meshes.append(surface)
    assert len(meshes[0].vertices) == len(meshes[1].vertices)
    np.testing.assert_array_equal(meshes[0].faces, meshes[1].faces)
    assert not np.allclose(meshes[0].vertices, meshes[1].vertices)
