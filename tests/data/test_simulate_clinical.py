"""``simulate --mode clinical`` on the tiny preset: the case, its files (``.npy`` and DICOM), resume, and
how ``register`` reads them (the intensity route of a processed "for presentation" image)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from biplanar.data.simulate import (
    APPEARANCE_STREAM,
    CLINICAL_FILES,
    SUBJECT_FILES,
    SimulationConfig,
    _child_seed,
    is_complete,
    simulate_case,
    simulate_dataset,
    subject_files,
    write_case,
)
from biplanar.geometry.presets import PAPER_SOURCE_DETECTOR_MM, PAPER_SOURCE_ISOCENTER_MM
from biplanar.io.dicom import read_dicom_radiograph, views_from_dicom
from biplanar.physics.clinical_appearance import ClinicalAppearance
from biplanar.registration.inputs import ModelDetector, read_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
CLINICAL = SimulationConfig(preset="tiny", mode="clinical")
SEED = 11


@pytest.fixture(scope="module")
def case():
    return simulate_case(SEED, CLINICAL)


@pytest.fixture(scope="module")
def line_integrals():
    """The same case's line integrals (of the same scene)."""
    return simulate_case(SEED, dataclasses.replace(CLINICAL, mode="line_integral")).radiographs


@pytest.fixture(scope="module")
def folder(case, tmp_path_factory):
    path = tmp_path_factory.mktemp("clinical") / "case"
    write_case(path, case)
    return path


def test_clinical_case_is_a_reproducible_12_bit_image(case):
    expected = ClinicalAppearance.draw(np.random.default_rng(_child_seed(SEED, APPEARANCE_STREAM)))
    assert case.appearance == expected
    again = simulate_case(SEED, CLINICAL)
    for name, image in case.radiographs.items():
        assert image.shape == CLINICAL.image_shape and image.dtype == np.float32
        assert np.array_equal(image, np.round(image)) and image.min() == 0.0 and image.max() == 4095.0
        assert np.array_equal(image, again.radiographs[name])
        assert np.array_equal(case.masks[name], again.masks[name])
    assert case.record()["appearance"] == expected.to_dict()
    assert "appearance" not in simulate_case(SEED, SimulationConfig(preset="tiny")).record()


def test_clinical_image_follows_the_line_integral(case, line_integrals):
    """Bone bright: the processed image correlates with the same case's line integral."""
    for name, image in case.radiographs.items():
        assert np.corrcoef(image.ravel(), line_integrals[name].ravel())[0, 1] > 0.7
        femur = case.masks[name] > 0.5
        assert image[femur].mean() > image[~femur].mean()


def test_clinical_files_and_dicom_tags(case, folder):
    assert sorted(path.name for path in folder.iterdir()) == sorted(SUBJECT_FILES + CLINICAL_FILES)
    assert subject_files("clinical") == SUBJECT_FILES + CLINICAL_FILES and subject_files("poisson") == SUBJECT_FILES
    assert is_complete(folder, subject_files("clinical"))
    (folder / "LAT.dcm").unlink()
    assert is_complete(folder) and not is_complete(folder, subject_files("clinical"))
    write_case(folder, case)
    assert json.loads((folder / "subject.json").read_text())["appearance"]["photometric"] == case.appearance.photometric
    views = views_from_dicom(folder / "AP.dcm", folder / "LAT.dcm", case.grid.centre_world)
    for name, view in views.items():
        np.testing.assert_allclose(view.matrix, case.views[name].matrix, atol=1e-9)
        dicom = read_dicom_radiograph(folder / f"{name}.dcm")
        intensity = dicom.assumptions["intensity"]
        assert intensity["pixel_intensity_relationship"] == "LOG" and intensity["route"] == "line-integral"
        assert intensity["photometric"] == case.appearance.photometric
        assert dicom.laterality == "R" and dicom.flips == ()
        # The reader undoes MONOCHROME1 and shifts air (the window's 0) to 0: the .npy's values exactly.
        np.testing.assert_array_equal(dicom.image, np.load(folder / f"{name}.npy"))


def test_register_reads_the_clinical_npy_and_dicom_alike(case, folder, line_integrals):
    """``--intensity auto`` takes both as line integrals (a window starts at 0; DICOM says LOG)."""
    spacing = CLINICAL.pixel_spacing_mm[0]
    detector = ModelDetector(
        CLINICAL.image_shape,
        spacing * PAPER_SOURCE_ISOCENTER_MM / PAPER_SOURCE_DETECTOR_MM,
        case.grid,
        lambda view: line_integrals[view.name],
    )
    masks = {name: folder / f"{name}_mask.npy" for name in case.views}
    arrays = read_inputs(
        {name: folder / f"{name}.npy" for name in case.views}, masks, folder / "geometry.json", detector, None
    )
    dicoms = read_inputs({name: folder / f"{name}.dcm" for name in case.views}, masks, None, detector, None)
    for name in case.views:
        assert arrays.views[name].assumptions["intensity"]["route"] == "line-integral"
        assert dicoms.views[name].assumptions["intensity"]["route"] == "line-integral"
        assert dicoms.views[name].assumptions["atlas_ncc"] > 0.7
        np.testing.assert_array_equal(arrays.views[name].image, dicoms.views[name].image)
        np.testing.assert_array_equal(arrays.views[name].image, case.radiographs[name])


def test_clinical_dataset_lists_and_resumes_its_dicoms(tmp_path):
    summary = simulate_dataset(tmp_path, 1, 0, CLINICAL, progress=False)
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["subject_files"] == list(SUBJECT_FILES + CLINICAL_FILES)
    (subject,) = summary.written
    (tmp_path / "subjects" / subject / "AP.dcm").unlink()  # an incomplete clinical subject is redone
    assert simulate_dataset(tmp_path, 1, 0, CLINICAL, progress=False).written == (subject,)
    assert simulate_dataset(tmp_path, 1, 0, CLINICAL, progress=False).skipped == (subject,)
