"""NIfTI volumes: affine and values survive a round trip; bad volumes give InputError."""

import nibabel as nib
import numpy as np
import pytest

from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid
from biplanar.io.volumes import read_volume, write_volume


def test_round_trip_keeps_affine_and_values(tmp_path):
    grid = VolumeGrid.from_spacing((6, 5, 4), (0.664, 0.664, 1.0), centre_world=(1.0, 2.0, 3.0))
    data = np.random.default_rng(0).normal(size=grid.shape).astype(np.float32)
    write_volume(tmp_path / "v.nii.gz", data, grid)
    read, read_grid = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(read, data)
    np.testing.assert_allclose(read_grid.affine, grid.affine, atol=1e-5)
    np.testing.assert_allclose(read_grid.spacing_mm, [0.664, 0.664, 1.0], atol=1e-6)


def test_vector_field_intent(tmp_path):
    grid = VolumeGrid.from_spacing((3, 4, 5), (1.0, 1.0, 1.0))
    field = np.zeros((*grid.shape, 1, 3), np.float32)
    write_volume(tmp_path / "d.nii.gz", field, grid, intent="vector")
    header = nib.load(str(tmp_path / "d.nii.gz")).header
    assert header.get_intent()[0] == "vector" and header.get_data_shape() == (3, 4, 5, 1, 3)


def test_bad_volumes(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), str(tmp_path / "n.nii"))
    with pytest.raises(InputError, match="n.nii: contains NaN"):
        read_volume(tmp_path / "n.nii")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), str(tmp_path / "4d.nii"))
    with pytest.raises(InputError, match="expected a 3D volume"):
        read_volume(tmp_path / "4d.nii")
