"""Clinic DICOM radiographs (CONTRACT section 7): every tag combination it names, on tiny written files."""

import json

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1

from biplanar.errors import InputError
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.dicom import (
    AIR_PERCENTILE,
    DicomRadiograph,
    dicom_view,
    read_dicom_radiograph,
    view_tags,
    views_from_dicom,
    write_dicom_dataset,
    write_dicom_radiograph,
    write_dicom_view,
)

SHAPE = (32, 24)
ISOCENTRE = np.array([10.0, -20.0, 30.0])
I0 = 30000.0  # unattenuated intensity of the transmission images
FULL_SCALE = 65535.0  # uint16, slope 1, intercept 0


def _line_integral() -> np.ndarray:
    """``(32, 24)``: air (0) around an asymmetric ramp up to 3, so that any flip shows."""
    image = np.zeros(SHAPE)
    image[4:28, 6:18] = np.linspace(0.0, 3.0, 24 * 12).reshape(24, 12) ** 1.5 / np.sqrt(3.0)
    return image


LINE_INTEGRAL = _line_integral()
LOG_IMAGE = 1000.0 + np.round(10000.0 * LINE_INTEGRAL)  # a LOG image: integers, so stored exactly


def _write(tmp_path, name="x.dcm", image=LOG_IMAGE, **tags):
    path = tmp_path / name
    write_dicom_radiograph(path, image, **tags)
    return path


def _expected_view(lao_rao, cranio_caudal=0.0, spacing=(0.93, 0.93)) -> ProjectionView:
    carm = CarmPose(lao_rao, cranio_caudal, 925.0, 1000.0, spacing)
    return ProjectionView.from_carm(carm, SHAPE, ISOCENTRE, "V")


def _assert_same_view(view: ProjectionView, expected: ProjectionView) -> None:
    assert view.image_shape == expected.image_shape
    np.testing.assert_allclose(view.matrix, expected.matrix, rtol=1e-9, atol=1e-9)


def _raises_one_line(match, call, *args, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- pixel values -----------------------------------------------------------------------------------------


def test_writer_makes_a_valid_dicom(tmp_path):
    path = _write(tmp_path, modality="CR")
    dataset = pydicom.dcmread(path)
    assert dataset.Modality == "CR" and dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert dataset.pixel_array.dtype == np.uint16
    np.testing.assert_array_equal(dataset.pixel_array, LOG_IMAGE)


def test_log_monochrome2_is_kept_and_shifted_to_zero(tmp_path):
    radiograph = read_dicom_radiograph(_write(tmp_path, photometric="MONOCHROME2"))
    assert isinstance(radiograph, DicomRadiograph)
    assert radiograph.image.dtype == np.float32 and radiograph.image.shape == SHAPE
    np.testing.assert_array_equal(radiograph.image, LOG_IMAGE - 1000.0)
    intensity = radiograph.assumptions["intensity"]
    assert intensity["route"] == "line-integral" and not intensity["inverted"]
    json.dumps(radiograph.assumptions)  # JSON-ready, for report.json


def test_monochrome1_is_inverted(tmp_path):
    path = _write(tmp_path, image=50000.0 - LOG_IMAGE, photometric="MONOCHROME1")
    radiograph = read_dicom_radiograph(path)
    np.testing.assert_array_equal(radiograph.image, LOG_IMAGE - 1000.0)
    assert radiograph.assumptions["intensity"]["inverted"]


def test_absent_relationship_is_a_line_integral(tmp_path):
    radiograph = read_dicom_radiograph(_write(tmp_path, intensity_relationship=None))
    np.testing.assert_array_equal(radiograph.image, LOG_IMAGE - 1000.0)
    assert radiograph.assumptions["intensity"]["route"] == "line-integral"


def test_rescale_slope_and_intercept(tmp_path):
    values = -1000.0 + 0.5 * LOG_IMAGE  # stored = (values + 1000) / 0.5 = LOG_IMAGE
    path = _write(tmp_path, image=values, rescale_slope=0.5, rescale_intercept=-1000.0)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, LOG_IMAGE)
    radiograph = read_dicom_radiograph(path)
    np.testing.assert_allclose(radiograph.image, values - values.min(), atol=1e-3)
    assert radiograph.assumptions["intensity"]["rescale"]["slope"] == 0.5


def _transmission(sign: int, intercept: float | None = None) -> np.ndarray:
    """LIN values: intensity ``I0 exp(-L)`` (sign +1) or ``full scale - I0 exp(-L)`` (sign -1)."""
    intensity = I0 * np.exp(-LINE_INTEGRAL)
    return intensity if sign == 1 else FULL_SCALE - intensity


@pytest.mark.parametrize("sign", [1, -1])
def test_lin_estimated_air_level(tmp_path, sign):
    assert (LINE_INTEGRAL == 0).mean() > 1 - AIR_PERCENTILE / 100  # enough air for the percentile
    path = _write(tmp_path, image=_transmission(sign), intensity_relationship="LIN", intensity_sign=sign)
    radiograph = read_dicom_radiograph(path)
    record = radiograph.assumptions["intensity"]
    assert record["route"] == "transmission" and record["sign"] == sign
    assert record["air_level"]["value"] == pytest.approx(I0, abs=0.5)
    np.testing.assert_allclose(radiograph.image, LINE_INTEGRAL, atol=1e-3)  # uint16 rounding at I0 e^-3


@pytest.mark.parametrize("sign", [1, -1])
def test_lin_given_air_level_is_exact(tmp_path, sign):
    path = _write(tmp_path, image=_transmission(sign), intensity_relationship="LIN", intensity_sign=sign)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    intensity = stored if sign == 1 else FULL_SCALE - stored
    air = I0 if sign == 1 else FULL_SCALE - I0  # in the file's own values
    radiograph = read_dicom_radiograph(path, air_level=air)
    assert radiograph.assumptions["intensity"]["air_level"]["source"] == "given"
    np.testing.assert_allclose(radiograph.image, np.maximum(-np.log(intensity / I0), 0.0), rtol=1e-6, atol=1e-7)


def test_lin_with_rescale(tmp_path):
    values = _transmission(1)
    path = _write(
        tmp_path,
        image=values,
        intensity_relationship="LIN",
        intensity_sign=1,
        rescale_slope=2.0,
        rescale_intercept=-500.0,
    )
    radiograph = read_dicom_radiograph(path, air_level=I0)
    np.testing.assert_allclose(radiograph.image, LINE_INTEGRAL, atol=2e-3)


def test_intensity_overrides(tmp_path):
    lin = _write(tmp_path, "lin.dcm", image=_transmission(1), intensity_relationship="LIN", intensity_sign=1)
    as_line_integral = read_dicom_radiograph(lin, intensity="line-integral")
    stored = pydicom.dcmread(lin).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(as_line_integral.image, stored - stored.min())
    log = _write(tmp_path, "log.dcm", image=_transmission(1), intensity_relationship="LOG")
    as_transmission = read_dicom_radiograph(log, intensity="transmission")
    assert as_transmission.assumptions["intensity"]["route"] == "transmission"
    np.testing.assert_allclose(as_transmission.image, LINE_INTEGRAL, atol=1e-3)
    _raises_one_line("intensity", read_dicom_radiograph, log, intensity="bogus")


# --- geometry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view_position", "orientation", "lao_rao"),
    [("AP", "L\\F", 0.0), ("PA", "R\\F", 180.0), ("RL", "P\\F", 90.0), ("LL", "A\\F", -90.0)],
)
def test_view_positions(tmp_path, view_position, orientation, lao_rao):
    path = _write(tmp_path, view_position=view_position, patient_orientation=orientation)
    radiograph = read_dicom_radiograph(path)
    assert radiograph.carm == CarmPose(lao_rao, 0.0, 925.0, 1000.0, (0.93, 0.93), None)
    assert radiograph.flips == ()
    _assert_same_view(dicom_view(radiograph, "V", ISOCENTRE), _expected_view(lao_rao))


@pytest.mark.parametrize(
    ("primary", "secondary", "lao_rao", "cranio_caudal"),
    [
        (0.0, None, 180.0, 0.0),  # detector anterior: a PA view
        (180.0, None, 0.0, 0.0),
        (-90.0, None, 90.0, 0.0),  # detector on the right (RAO 90): source on the left
        (90.0, None, -90.0, 0.0),
        (-80.0, None, 100.0, 0.0),  # a non-orthogonal lateral
        (170.0, 12.0, -10.0, -12.0),
        (-180.0, -25.0, 0.0, 25.0),
    ],
)
def test_positioner_angles(tmp_path, primary, secondary, lao_rao, cranio_caudal):
    path = _write(tmp_path, view_position=None, primary_angle_deg=primary, secondary_angle_deg=secondary)
    radiograph = read_dicom_radiograph(path)
    assert radiograph.carm is not None
    assert radiograph.carm.lao_rao_deg == pytest.approx(lao_rao)
    assert radiograph.carm.cranio_caudal_deg == pytest.approx(cranio_caudal)
    _assert_same_view(dicom_view(radiograph, "V", ISOCENTRE), _expected_view(lao_rao, cranio_caudal))


def test_positioner_angle_wins_over_view_position(tmp_path):
    near = _write(tmp_path, "near.dcm", view_position="RL", primary_angle_deg=-80.0, patient_orientation="P\\F")
    radiograph = read_dicom_radiograph(near)
    assert radiograph.carm is not None and radiograph.carm.lao_rao_deg == pytest.approx(100.0)
    assert radiograph.assumptions["warnings"] == [] and radiograph.flips == ()
    far = _write(tmp_path, "far.dcm", view_position="AP", primary_angle_deg=-90.0)
    with pytest.warns(UserWarning, match="disagrees with View Position"):
        radiograph = read_dicom_radiograph(far)
    assert radiograph.carm is not None and radiograph.carm.lao_rao_deg == pytest.approx(90.0)


def test_secondary_angle_with_view_position(tmp_path):
    radiograph = read_dicom_radiograph(_write(tmp_path, view_position="AP", secondary_angle_deg=15.0))
    assert radiograph.carm is not None and radiograph.carm.cranio_caudal_deg == pytest.approx(-15.0)


def test_views_from_dicom(tmp_path):
    ap = _write(tmp_path, "ap.dcm", view_position="AP", imager_pixel_spacing_mm=(0.2, 0.3))
    lat = _write(tmp_path, "lat.dcm", view_position=None, primary_angle_deg=-80.0)
    views = views_from_dicom(ap, lat, ISOCENTRE)
    assert list(views) == ["AP", "LAT"] and views["AP"].name == "AP" and views["LAT"].name == "LAT"
    _assert_same_view(views["AP"], _expected_view(0.0, spacing=(0.2, 0.3)))
    _assert_same_view(views["LAT"], _expected_view(100.0))
    _assert_same_view(dicom_view(read_dicom_radiograph(lat), "LAT", ISOCENTRE), views["LAT"])


def test_imager_pixel_spacing_first_pixel_spacing_as_fallback(tmp_path):
    both = _write(tmp_path, "both.dcm", imager_pixel_spacing_mm=(0.2, 0.3), pixel_spacing_mm=(0.5, 0.5))
    assert read_dicom_radiograph(both).pixel_spacing_mm == (0.2, 0.3)
    fallback = _write(tmp_path, "fallback.dcm", imager_pixel_spacing_mm=None, pixel_spacing_mm=(0.5, 0.6))
    with pytest.warns(UserWarning, match=r"Pixel Spacing \(0028,0030\)"):
        radiograph = read_dicom_radiograph(fallback)
    assert radiograph.pixel_spacing_mm == (0.5, 0.6)
    assert radiograph.carm is not None and radiograph.carm.pixel_spacing_mm == (0.5, 0.6)
    assert radiograph.assumptions["warnings"] and "fallback" in radiograph.assumptions["geometry"]["pixel_spacing_from"]


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ({"source_detector_mm": None}, r"Distance Source to Detector \(0018,1110\) missing"),
        ({"source_patient_mm": None}, r"Distance Source to Patient \(0018,1111\) missing"),
        ({"imager_pixel_spacing_mm": None}, r"Imager Pixel Spacing \(0018,1164\) missing"),
        ({"view_position": None}, r"Positioner Primary Angle \(0018,1510\) and View Position \(0018,5101\) missing"),
        ({"view_position": "LLO"}, r"View Position \(0018,5101\) is 'LLO'"),
    ],
)
def test_missing_geometry_tag_is_a_one_line_error(tmp_path, tags, match):
    path = _write(tmp_path, "ap.dcm", **tags)
    radiograph = read_dicom_radiograph(path)  # the image itself is usable with --geometry
    assert radiograph.carm is None
    message = _raises_one_line(match, dicom_view, radiograph, "AP", ISOCENTRE)
    assert message.startswith(str(path)) and "--geometry" in message
    _raises_one_line(match, views_from_dicom, path, path, ISOCENTRE)


def test_no_isocentre_is_an_error(tmp_path):
    radiograph = read_dicom_radiograph(_write(tmp_path))
    _raises_one_line("isocenter", dicom_view, radiograph, "AP", None)


# --- orientation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view_position", "orientation", "flips"),
    [
        ("AP", "R\\F", (1,)),
        ("AP", "L\\H", (0,)),
        ("AP", "RA\\HL", (0, 1)),  # principal letters count
        ("PA", "L\\F", (1,)),
        ("RL", "A\\H", (0, 1)),
        ("LL", "P\\F", (1,)),
    ],
)
def test_flipped_orientation_round_trips(tmp_path, view_position, orientation, flips):
    reference = read_dicom_radiograph(_write(tmp_path, "ref.dcm", view_position=view_position))
    assert reference.flips == () and "absent" in reference.assumptions["orientation"]["note"]
    path = _write(
        tmp_path,
        "flipped.dcm",
        image=np.flip(LOG_IMAGE, flips),
        view_position=view_position,
        patient_orientation=orientation,
    )
    radiograph = read_dicom_radiograph(path)
    assert radiograph.flips == flips and radiograph.assumptions["flips"] == list(flips)
    np.testing.assert_array_equal(radiograph.image, reference.image)
    assert radiograph.image.flags.c_contiguous


def test_orientation_unchecked_without_a_view_angle(tmp_path):
    radiograph = read_dicom_radiograph(_write(tmp_path, view_position=None, patient_orientation="R\\F"))
    assert radiograph.flips == () and "not checked" in radiograph.assumptions["orientation"]["note"]


@pytest.mark.parametrize(
    ("view_position", "orientation", "match"),
    [
        ("AP", "F\\L", "transposed"),
        ("RL", "H\\A", "transposed"),
        ("AP", "A\\F", "does not match"),
        ("AP", "L", "expected two values"),
        ("AP", "X\\F", "expected two values"),
    ],
)
def test_bad_orientation_is_an_error(tmp_path, view_position, orientation, match):
    path = _write(tmp_path, view_position=view_position, patient_orientation=orientation)
    _raises_one_line(rf"Patient Orientation \(0020,0020\).*{match}", read_dicom_radiograph, path)


# --- side -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_laterality", "laterality", "side"),
    [("L", None, "L"), ("R", "L", "R"), (None, "R", "R"), ("B", None, None), (None, None, None)],
)
def test_laterality(tmp_path, image_laterality, laterality, side):
    path = _write(tmp_path, image_laterality=image_laterality, laterality=laterality)
    assert read_dicom_radiograph(path).laterality == side


# --- refused files ----------------------------------------------------------------------------------------


def _edit(tmp_path, edit, name="edited.dcm"):
    """A written radiograph with its dataset changed by ``edit`` and saved again."""
    dataset = pydicom.dcmread(_write(tmp_path, "base.dcm"))
    edit(dataset)
    path = tmp_path / name
    write_dicom_dataset(path, dataset)
    return path


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGLosslessSV1, JPEG2000Lossless])
def test_compressed_without_decoder(tmp_path, syntax):
    def compress(dataset):  # a compressed transfer syntax over bytes that are no such stream
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.PixelData = encapsulate([dataset.PixelData])
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True

    path = _edit(tmp_path, compress)
    _raises_one_line(
        r"compressed Pixel Data \(7FE0,0010\).*Transfer Syntax UID \(0002,0010\)", read_dicom_radiograph, path
    )


def test_multi_frame(tmp_path):
    path = _write(tmp_path, image=np.stack([LOG_IMAGE, LOG_IMAGE]))
    _raises_one_line(r"Number of Frames \(0028,0008\) is 2", read_dicom_radiograph, path)


def test_rgb(tmp_path):
    def colour(dataset):
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
        dataset.PixelData = np.zeros((*SHAPE, 3), np.uint8).tobytes()

    _raises_one_line(r"Samples per Pixel \(0028,0002\) is 3", read_dicom_radiograph, _edit(tmp_path, colour))


@pytest.mark.parametrize(
    ("keyword", "match"),
    [
        ("PhotometricInterpretation", r"Photometric Interpretation \(0028,0004\) missing"),
        ("PixelData", r"Pixel Data \(7FE0,0010\) missing"),
    ],
)
def test_missing_pixel_tag(tmp_path, keyword, match):
    _raises_one_line(match, read_dicom_radiograph, _edit(tmp_path, lambda dataset: delattr(dataset, keyword)))


def test_constant_image(tmp_path):
    path = _write(tmp_path, image=np.full(SHAPE, 7.0))
    _raises_one_line(r"Pixel Data \(7FE0,0010\) is constant", read_dicom_radiograph, path)


def test_nan_image(tmp_path):
    def floating(dataset):
        image = LOG_IMAGE.astype("<f4")
        image[3, 4] = np.nan
        del dataset.PixelData
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 32, 32, 31
        dataset.FloatPixelData = image.tobytes()

    _raises_one_line(r"Pixel Data \(7FE0,0010\) contains NaN", read_dicom_radiograph, _edit(tmp_path, floating))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom warns on writing it
def test_nan_rescale(tmp_path):
    path = _edit(tmp_path, lambda dataset: setattr(dataset, "RescaleSlope", "NaN"))
    _raises_one_line(r"Rescale Slope \(0028,1053\)", read_dicom_radiograph, path)


def test_not_dicom(tmp_path):
    path = tmp_path / "ap.dcm"
    path.write_text("not a radiograph\n")
    _raises_one_line("ap.dcm: not a DICOM file", read_dicom_radiograph, path)
    _raises_one_line("not a DICOM file", views_from_dicom, path, path, ISOCENTRE)
    _raises_one_line("file not found", read_dicom_radiograph, tmp_path / "missing.dcm")


@pytest.mark.parametrize(
    "lao_rao, cranio_caudal, side, position, orientation",
    [
        (0.0, 0.0, "right", "AP", "L\\F"),
        (90.0, 0.0, "right", "RL", "P\\F"),
        (-90.0, 0.0, "left", "LL", "A\\F"),
        (22.0, 0.0, "right", "AP", "L\\F"),
        (105.0, -12.0, "right", "RL", "P\\F"),
    ],
)
def test_write_dicom_view_round_trip(tmp_path, lao_rao, cranio_caudal, side, position, orientation):
    """The tags written for a C-arm view read back as the same view, with no flip and the side's laterality."""
    view = _expected_view(lao_rao, cranio_caudal, spacing=(0.6, 0.7))
    tags = view_tags(view, side)
    assert (tags["view_position"], tags["patient_orientation"]) == (position, orientation)
    assert (tags["primary_angle_deg"] is None) == (lao_rao in (0.0, 90.0, -90.0))
    path = tmp_path / "view.dcm"
    write_dicom_view(path, LOG_IMAGE, view, side=side, bits_stored=15)
    radiograph = read_dicom_radiograph(path)
    assert radiograph.flips == () and radiograph.laterality == ("L" if side == "left" else "R")
    assert radiograph.assumptions["warnings"] == []
    assert pydicom.dcmread(path).BitsStored == 15
    _assert_same_view(dicom_view(radiograph, "V", ISOCENTRE), view)


def test_write_dicom_view_refusals(tmp_path):
    view = _expected_view(0.0)
    with pytest.raises(ValueError, match="no C-arm pose"):
        view_tags(ProjectionView(view.matrix, view.image_shape, "AP"))
    with pytest.raises(ValueError, match="expected the view's shape"):
        write_dicom_view(tmp_path / "x.dcm", LOG_IMAGE[:, :10], view)
    with pytest.raises(ValueError, match=r"\[0, 4095\] \(12 bits stored\)"):
        write_dicom_view(tmp_path / "x.dcm", np.full(SHAPE, 4096.0), view, bits_stored=12)
