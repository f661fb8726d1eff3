"""The shipped atlases are exactly what the generator makes; loading and writing them."""

import numpy as np
import pytest
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.data.atlas import load_atlas, shipped_atlas_dir
from biplanar.data.phantom import make_atlas
from biplanar.errors import InputError


@pytest.mark.parametrize("preset", ["tiny", "lite", pytest.param("paper", marks=pytest.mark.slow)])
def test_shipped_atlas_is_the_generated_mean_shape(preset):
    shipped = load_atlas(preset)
    generated = make_atlas(preset)
    assert shipped.grid.shape == generated.grid.shape
    np.testing.assert_allclose(shipped.grid.affine, generated.grid.affine, atol=1e-4)
    np.testing.assert_array_equal(shipped.labels, generated.labels)
    assert np.abs(shipped.ct_hu - generated.ct_hu).max() <= 0.5  # stored as int16 HU
    np.testing.assert_allclose(shipped.landmarks["head_centre_mm"], generated.landmarks.head_centre_mm, atol=1e-6)


def test_atlas_command_writes_a_loadable_atlas(tmp_path):
    result = CliRunner().invoke(app, ["atlas", "--preset", "tiny", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    written = load_atlas(directory=tmp_path / "a")
    np.testing.assert_array_equal(written.labels, load_atlas("tiny").labels)
    assert (tmp_path / "a" / "atlas.nii.gz").stat().st_mode & 0o044  # readable by others
    bad = CliRunner().invoke(app, ["atlas", "--preset", "huge", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "preset" in bad.output and not (tmp_path / "b").exists()


def test_load_atlas_errors(tmp_path):
    with pytest.raises(InputError, match="atlas.nii.gz: file not found"):
        load_atlas(directory=tmp_path)
    assert shipped_atlas_dir("lite").is_dir()
