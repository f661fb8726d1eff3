"""``register --estimate-pose``: each view's calibration corrected by a rigid registration of the atlas
to its radiograph before the network, on a tiny simulated case whose LAT view is stated 5 deg off."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.config import load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.simulate import SimulationConfig, simulate_case
from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView, view_angles_deg
from biplanar.io.geometry_file import read_geometry, write_geometry
from biplanar.io.images import write_image
from biplanar.io.volumes import write_volume
from biplanar.models.network import AtlasRegistrationNet
from biplanar.registration import CORRECTED_GEOMETRY, OUTPUT_FILES, register
from biplanar.training.checkpoints import FORMAT, VERSION

LAT_ERROR_DEG = 5.0
TOLERANCE_DEG = 1.0


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An untrained tiny weights-only checkpoint and a tiny simulated case (true views AP 0 deg,
    LAT 90 deg) whose geometry file states the LAT view at 95 deg."""
    folder = tmp_path_factory.mktemp("case")
    torch.manual_seed(0)
    config = load_config("tiny")
    network = AtlasRegistrationNet(config, load_atlas("tiny"))
    torch.save(
        {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "model": network.state_dict()},
        folder / "weights.pt",
    )
    # The CT alone (scene "grid"): the correction matches the whole atlas's DRR, box edges included.
    # This case's body scene takes the hip reference instead (tests/pose/test_hip_reference.py); the
    # whole-atlas search settled 19 deg off there, its LAT view overlaying the contralateral hip.
    simulated = simulate_case(3, SimulationConfig(preset="tiny", scene="grid", num_samples=64))
    for name in ("AP", "LAT"):
        write_image(folder / f"{name}.npy", simulated.radiographs[name])
        write_image(folder / f"{name}_mask.npy", simulated.masks[name])
    write_volume(folder / "labels.nii.gz", simulated.labels, simulated.grid)
    true_lat = simulated.views["LAT"]
    assert true_lat.carm is not None and true_lat.carm.lao_rao_deg == 90.0
    stated_lat = ProjectionView.from_carm(
        dataclasses.replace(true_lat.carm, lao_rao_deg=true_lat.carm.lao_rao_deg + LAT_ERROR_DEG),
        true_lat.image_shape,
        name="LAT",
    )
    write_geometry(folder / "geometry.json", {"AP": simulated.views["AP"], "LAT": stated_lat})
    return folder


def _options(case, out_dir) -> list[str]:
    return [
        "register",
        "--geometry",
        str(case / "geometry.json"),
        "--ap",
        str(case / "AP.npy"),
        "--lat",
        str(case / "LAT.npy"),
        "--ap-mask",
        str(case / "AP_mask.npy"),
        "--lat-mask",
        str(case / "LAT_mask.npy"),
        "--model",
        str(case / "weights.pt"),
        "--truth-labels",
        str(case / "labels.nii.gz"),
        "--out",
        str(out_dir),
    ]


@pytest.fixture(scope="module")
def corrected_run(case, tmp_path_factory):
    """``biplanar register ... --estimate-pose --pose-method opt-gc``: its CLI result, output folder and
    the views of every forward pass of the network."""
    out_dir = tmp_path_factory.mktemp("corrected") / "out"
    given = []
    forward = AtlasRegistrationNet.forward

    def spy(self, radiographs, views, *args, **kwargs):
        given.append(views)
        return forward(self, radiographs, views, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AtlasRegistrationNet, "forward", spy)
        result = CliRunner().invoke(app, [*_options(case, out_dir), "--estimate-pose", "--pose-method", "opt-gc"])
    return result, out_dir, given


def test_a_lat_view_stated_5_deg_off_is_corrected_to_within_1_deg(case, corrected_run):
    result, out_dir, _ = corrected_run
    assert result.exit_code == 0, result.output
    stated = read_geometry(case / "geometry.json")
    assert view_angles_deg(stated["LAT"])[0] == pytest.approx(90.0 + LAT_ERROR_DEG, abs=1e-9)
    corrected = read_geometry(out_dir / CORRECTED_GEOMETRY)
    assert set(corrected) == {"AP", "LAT"}
    lat_deg, lat_cranio_deg = view_angles_deg(corrected["LAT"])
    ap_deg, ap_cranio_deg = view_angles_deg(corrected["AP"])
    assert abs(lat_deg - 90.0) < TOLERANCE_DEG and abs(lat_cranio_deg) < TOLERANCE_DEG
    assert abs(ap_deg) < TOLERANCE_DEG and abs(ap_cranio_deg) < TOLERANCE_DEG
    # a rotation about the isocentre (0, 0, 0): the isocentre projects where the stated view puts it
    isocentre = torch.zeros(1, 3, dtype=torch.float64)
    torch.testing.assert_close(
        corrected["LAT"].project(isocentre)[0], stated["LAT"].project(isocentre)[0], atol=1e-6, rtol=0
    )


def test_report_records_the_correction_and_the_corrected_geometry_is_written(corrected_run):
    result, out_dir, _ = corrected_run
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out_dir.iterdir()) == sorted([*OUTPUT_FILES, CORRECTED_GEOMETRY])
    report = json.loads((out_dir / "report.json").read_text())
    correction = report["pose_correction"]
    assert correction["method"] == "opt-gc" and correction["mode"] == "per_view"
    assert correction["time_s"] > 0 and report["timings_s"]["pose_correction"] == correction["time_s"]
    lat = correction["views"]["LAT"]
    assert lat["carm_angles_deg"]["stated"] == pytest.approx([90.0 + LAT_ERROR_DEG, 0.0], abs=1e-9)
    assert abs(lat["carm_angles_deg"]["corrected"][0] - 90.0) < TOLERANCE_DEG
    # the atlas turns about +z by the error (the C-arm by its inverse): angle and rz agree
    assert abs(lat["angle_deg"] - LAT_ERROR_DEG) < TOLERANCE_DEG
    assert abs(lat["rotation_deg"][2] - LAT_ERROR_DEG) < TOLERANCE_DEG
    assert correction["views"]["AP"]["angle_deg"] < TOLERANCE_DEG


def test_the_network_is_given_the_corrected_views(case, corrected_run):
    result, out_dir, given = corrected_run
    assert result.exit_code == 0, result.output
    corrected = read_geometry(out_dir / CORRECTED_GEOMETRY)
    stated = read_geometry(case / "geometry.json")
    assert len(given) == 1 and len(given[0]) == 1  # one forward pass, one (AP, LAT) pair
    for view, name in zip(given[0][0], ("AP", "LAT")):
        np.testing.assert_allclose(view.matrix, corrected[name].matrix, rtol=1e-12, atol=1e-9)
    assert np.abs(corrected["LAT"].matrix - stated["LAT"].matrix).max() > 1.0


def test_a_bad_pose_method_is_refused_and_nothing_is_written(case, tmp_path):
    with pytest.raises(InputError, match="pose method: expected one of opt-ncc, opt-ngi, opt-gc, got 'opt-xx'"):
        register(
            case / "geometry.json",
            case / "AP.npy",
            case / "LAT.npy",
            tmp_path / "out",
            case / "weights.pt",
            estimate_pose=True,
            pose_method="opt-xx",
            progress=False,
        )
    result = CliRunner().invoke(app, [*_options(case, tmp_path / "cli"), "--estimate-pose", "--pose-method", "gc"])
    assert result.exit_code == 2 and "pose-method" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == []
