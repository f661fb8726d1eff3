"""A simulated patient's clinic DICOMs (``write_clinical_dicoms``): the tags say the clinic views, per side."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from biplanar.data.clinical import clinic_views, write_clinical_dicoms
from biplanar.data.simulate import SimulationConfig
from biplanar.geometry import VolumeGrid
from biplanar.io.dicom import read_dicom_radiograph, views_from_dicom


@pytest.mark.parametrize(
    "side, lat_position, lat_orientation", [("right", "RL", ["P", "F"]), ("left", "LL", ["A", "F"])]
)
def test_clinic_dicoms_carry_the_clinic_views(tmp_path, side, lat_position, lat_orientation):
    grid = VolumeGrid.from_spacing((16, 16, 16), (8.0, 8.0, 8.0))
    ct_hu = np.zeros(grid.shape, dtype=np.float32)
    ct_hu[5:11, 5:11, 5:11] = 1500.0
    files = write_clinical_dicoms(tmp_path, ct_hu, grid, side, SimulationConfig(preset="tiny", num_samples=16))
    expected = clinic_views(grid, side)
    for name, view in views_from_dicom(files["AP"], files["LAT"], grid.centre_world).items():
        np.testing.assert_allclose(view.matrix, expected[name].matrix, atol=1e-9)
    for name, position, orientation in (("AP", "AP", ["L", "F"]), ("LAT", lat_position, lat_orientation)):
        dataset = pydicom.dcmread(files[name], stop_before_pixels=True)
        assert dataset.ViewPosition == position and list(dataset.PatientOrientation) == orientation
        assert "PositionerPrimaryAngle" not in dataset and dataset.PixelIntensityRelationship == "LIN"
        radiograph = read_dicom_radiograph(files[name])
        assert radiograph.laterality == ("L" if side == "left" else "R") and radiograph.flips == ()
        assert radiograph.image.max() > 1.0  # the bone cube's line integral, read back from the counts
