"""Clinic radiographs as DICOM (``docs/contract.md`` section 7): pixels to line integrals, geometry from tags.

:func:`read_dicom_radiograph` turns a DICOM radiograph into what the model compares: a ``(rows, cols)``
float32 line integral (CONTRACT section 3), flipped to the detector axes of section 2, with the C-arm
pose, pixel spacing and side read from the tags, and a JSON-ready record of everything it assumed.
:func:`views_from_dicom` builds the two projection views from the tags alone (no pixel decoding).
:func:`write_dicom_radiograph` writes a valid DICOM radiograph (for tests and the demo);
:func:`write_dicom_view` one whose geometry tags say a given C-arm view (:func:`view_tags`).

Where section 7 is silent, DICOM PS3.3 decides; the choices made here:

- ``LIN`` with Pixel Intensity Relationship Sign −1 (higher value = less intensity): the intensity is
  ``I = top - value``, ``top`` the largest value the file can hold (Bits Stored and Pixel Representation
  through the rescale), i.e. the detector writes ``full scale - k I``. ``air_level`` is given in the
  file's own (rescaled) values and goes through the same map.
- The unattenuated level, when not given, is the :data:`AIR_PERCENTILE` th percentile of ``I``; ``I`` is
  clipped below at :data:`INTENSITY_FLOOR` × ``I_air`` and the line integral at 0 (no negative path).
- ``LOG`` or absent relationship: the values are a monotone function of the line integral of unknown
  scale; ``MONOCHROME1`` is negated, and the result shifted so its minimum (air) is 0.
- A Pixel Intensity Relationship other than ``LIN``/``LOG`` (e.g. ``DISP``) takes the ``LOG`` route,
  with a warning.
- Positioner Secondary Angle β gives ``cranio_caudal_deg = -β`` also when the view angle comes from View
  Position (0 when β is absent).
- Patient Orientation: only the first (principal) letter of each value counts (PS3.3 C.7.6.1.1.1).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from biplanar.errors import InputError
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.atomic import atomic_path
from biplanar.physics.intensity import AIR_PERCENTILE, INTENSITY_FLOOR, INTENSITY_ROUTES, transmission_to_line_integral

VIEW_POSITIONS = {"AP": 0.0, "PA": 180.0, "RL": 90.0, "LL": -90.0}  # View Position -> lao_rao_deg
VIEW_POSITION_TOLERANCE_DEG = 45.0  # a Positioner Primary Angle further than this from View Position warns

# Patient Orientation letters (PS3.3 C.7.6.1.1.1) as world directions (CONTRACT section 1: RAS+).
_LETTER_DIRECTIONS = {
    "R": np.array([1.0, 0.0, 0.0]),
    "L": np.array([-1.0, 0.0, 0.0]),
    "A": np.array([0.0, 1.0, 0.0]),
    "P": np.array([0.0, -1.0, 0.0]),
    "H": np.array([0.0, 0.0, 1.0]),
    "F": np.array([0.0, 0.0, -1.0]),
}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "H": "F", "F": "H"}
_AXIS_NAMES = {0: "rows (v)", 1: "columns (u)"}
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


@dataclass(frozen=True, eq=False)
class DicomRadiograph:
    """A clinic radiograph read from DICOM, ready for the model.

    Attributes:
        path: the file, as given.
        image: ``(rows, cols)`` float32 line integral (dimensionless; for the ``LOG`` route a monotone
            function of it, air = 0), already flipped by ``flips`` to the detector axes of CONTRACT
            section 2.
        pixel_spacing_mm: ``(row, col)`` detector spacing, mm, or ``None`` when the tags have none.
        carm: the C-arm pose from the tags (``isocenter_mm=None``: the atlas centre), or ``None`` when
            an angle, distance or spacing is missing; ``geometry_error`` then says which.
        laterality: ``'L'``, ``'R'`` or ``None`` (Image Laterality, else Laterality).
        flips: numpy axes the stored image was flipped along (0: rows / ``v``, 1: columns / ``u``);
            ``np.flip(drawing, flips)`` takes a drawing on ``image`` back to the file's orientation.
        assumptions: JSON-ready record of the intensity route, geometry source, flips, fallbacks and
            warnings (for ``report.json``).
        geometry_error: the one-line reason ``carm`` is ``None``, else ``None``.
    """

    path: str
    image: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    carm: CarmPose | None
    laterality: str | None
    flips: tuple[int, ...]
    assumptions: dict[str, Any] = field(default_factory=dict)
    geometry_error: str | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the image (= (Rows, Columns) of the file)."""
        rows, cols = self.image.shape
        return int(rows), int(cols)


def _label(keyword: str) -> str:
    """A tag's name and number, e.g. ``'Distance Source to Detector (0018,1110)'``."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{dictionary_description(keyword)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _value(dataset: Dataset, keyword: str) -> Any:
    """The tag's value, or ``None`` when it is absent or empty."""
    value = dataset.get(keyword)
    if value is None or (isinstance(value, (str, bytes, list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _numbers(value: Any) -> list[float]:
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return [float(item) for item in items]


def _number(dataset: Dataset, keyword: str, path: Path) -> float | None:
    """A single finite number from a tag, ``None`` when absent; InputError when malformed."""
    value = _value(dataset, keyword)
    if value is None:
        return None
    try:
        numbers = _numbers(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {_label(keyword)} is {value!r}: expected a number") from None
    if len(numbers) != 1 or not math.isfinite(numbers[0]):
        raise InputError(f"{path}: {_label(keyword)} is {value!r}: expected one finite number")
    return numbers[0]


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = _value(dataset, keyword)
    return None if value is None else str(value).strip().upper()


def _warn(assumptions: dict[str, Any], message: str) -> None:
    assumptions["warnings"].append(message)
    warnings.warn(message, stacklevel=2)


def _read_dataset(path: Path, pixels: bool) -> Dataset:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no 'DICM' file header)") from None
    except Exception as error:  # pydicom raises many types for a damaged file
        raise InputError(f"{path}: unreadable DICOM file ({type(error).__name__}: {_one_line(error)})") from None


def _require(dataset: Dataset, keyword: str, path: Path) -> Any:
    value = _value(dataset, keyword)
    if value is None:
        raise InputError(f"{path}: {_label(keyword)} missing")
    return value


def _check_pixel_format(dataset: Dataset, path: Path) -> None:
    """Refuse what is not one greyscale frame: colour, several frames, no pixel data."""
    samples = int(_require(dataset, "SamplesPerPixel", path))
    if samples != 1:
        raise InputError(
            f"{path}: {_label('SamplesPerPixel')} is {samples} (a colour image): expected 1, a greyscale radiograph"
        )
    photometric = str(_require(dataset, "PhotometricInterpretation", path)).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"{path}: {_label('PhotometricInterpretation')} is {photometric!r}: expected MONOCHROME1 or MONOCHROME2"
        )
    frames = _value(dataset, "NumberOfFrames")
    if frames is not None and int(frames) > 1:
        raise InputError(f"{path}: {_label('NumberOfFrames')} is {int(frames)}: expected one frame (a radiograph)")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        _require(dataset, keyword, path)
    if all(_value(dataset, keyword) is None for keyword in _PIXEL_DATA_KEYWORDS):
        raise InputError(f"{path}: {_label('PixelData')} missing")


def _decode(dataset: Dataset, path: Path) -> np.ndarray:
    """The stored pixel values as float64 ``(rows, cols)``."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:  # pydicom's decoders raise many types (missing plugin, corrupt stream)
        if syntax is not None and syntax.is_compressed:
            raise InputError(
                f"{path}: compressed {_label('PixelData')} ({_label('TransferSyntaxUID')} {syntax.name!r}) "
                f"could not be decoded ({_one_line(error)}): install a decoder (pylibjpeg, gdcm) "
                "or export the image uncompressed"
            ) from None
        raise InputError(f"{path}: {_label('PixelData')} unreadable ({_one_line(error)})") from None
    if pixels.ndim != 2:
        raise InputError(f"{path}: {_label('PixelData')} has shape {pixels.shape}: expected (rows, cols)")
    return pixels.astype(np.float64)


def _rescale(dataset: Dataset, path: Path, assumptions: dict[str, Any]) -> tuple[float, float]:
    slope = _number(dataset, "RescaleSlope", path)
    intercept = _number(dataset, "RescaleIntercept", path)
    if slope == 0:
        raise InputError(f"{path}: {_label('RescaleSlope')} is 0: the image would be constant")
    if _value(dataset, "ModalityLUTSequence") is not None:
        _warn(assumptions, f"{path}: {_label('ModalityLUTSequence')} present and not applied (only the rescale is)")
    assumptions["intensity"]["rescale"] = {
        "slope": 1.0 if slope is None else slope,
        "intercept": 0.0 if intercept is None else intercept,
        "from_tags": {"slope": slope is not None, "intercept": intercept is not None},
    }
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _full_scale(dataset: Dataset, slope: float, intercept: float) -> float:
    """The largest value (after the rescale) that the stored pixels can hold."""
    bits = int(_value(dataset, "BitsStored") or _value(dataset, "BitsAllocated"))
    if int(_value(dataset, "PixelRepresentation") or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    return max(low * slope + intercept, high * slope + intercept)


def _transmission_to_line_integral(
    values: np.ndarray,
    dataset: Dataset,
    path: Path,
    rescale: tuple[float, float],
    air_level: float | None,
    record: dict[str, Any],
) -> np.ndarray:
    """``-log(I / I_air)`` of a ``LIN`` image (values proportional to the detected intensity)."""
    sign_value = _number(dataset, "PixelIntensityRelationshipSign", path)
    if sign_value not in (None, 1.0, -1.0):
        raise InputError(f"{path}: {_label('PixelIntensityRelationshipSign')} is {sign_value:g}: expected +1 or -1")
    sign = -1 if sign_value == -1.0 else 1
    record["sign"] = sign
    record["sign_from_tag"] = sign_value is not None
    if sign == 1:
        record["intensity_map"] = "I = value"
        intensity = values
        air = air_level
    else:
        top = _full_scale(dataset, *rescale)
        record["intensity_map"] = f"I = {top:g} - value (full scale of the stored bits, after the rescale)"
        intensity = top - values
        air = None if air_level is None else top - air_level
    try:
        line_integral, air = transmission_to_line_integral(intensity, air)
    except ValueError:
        raise InputError(
            f"{path}: the unattenuated intensity level is not positive: "
            f"check {_label('PixelIntensityRelationshipSign')} or give the air level"
        ) from None
    source = "given" if air_level is not None else f"estimated: {AIR_PERCENTILE}th percentile of the intensity"
    record["air_level"] = {"value": air, "source": source}
    record["intensity_floor"] = INTENSITY_FLOOR * air
    record["negative_line_integrals"] = "clipped to 0"
    return line_integral


def _monotone_to_line_integral(values: np.ndarray, photometric: str, record: dict[str, Any]) -> np.ndarray:
    """A ``LOG`` image: ``MONOCHROME1`` negated, then shifted so that the minimum (air) is 0."""
    oriented = -values if photometric == "MONOCHROME1" else values
    record["inverted"] = photometric == "MONOCHROME1"
    record["offset"] = float(-oriented.min())
    record["scale"] = "unknown: a monotone function of the line integral, shifted so that air (the minimum) is 0"
    return oriented - oriented.min()


def _line_integral(
    dataset: Dataset, path: Path, intensity: str, air_level: float | None, assumptions: dict[str, Any]
) -> np.ndarray:
    record = assumptions["intensity"]
    rescale = _rescale(dataset, path, assumptions)
    values = _decode(dataset, path) * rescale[0] + rescale[1]
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: {_label('PixelData')} contains NaN or infinite values")
    if values.max() == values.min():
        raise InputError(f"{path}: {_label('PixelData')} is constant ({values.min():g}): no image")
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    record["photometric"] = photometric
    relationship = _text(dataset, "PixelIntensityRelationship")
    record["pixel_intensity_relationship"] = relationship
    if intensity == "auto":
        route = "transmission" if relationship == "LIN" else "line-integral"
        record["decided_by"] = f"{_label('PixelIntensityRelationship')} = {relationship or 'absent'}"
        if relationship not in (None, "LIN", "LOG"):
            _warn(
                assumptions,
                f"{path}: {_label('PixelIntensityRelationship')} is {relationship!r}: "
                "taken as a monotone function of the line integral (as LOG)",
            )
    else:
        route = intensity
        record["decided_by"] = f"intensity={intensity!r} given"
    record["route"] = route
    if route == "transmission":
        return _transmission_to_line_integral(values, dataset, path, rescale, air_level, record)
    if air_level is not None:
        _warn(assumptions, f"{path}: air level {air_level:g} ignored: the image is read as a line integral")
    return _monotone_to_line_integral(values, photometric, record)


def _normalise_deg(angle: float) -> float:
    """``angle`` in degrees mapped to ``(-180, 180]``."""
    wrapped = (angle + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 else wrapped


def _angular_distance_deg(a: float, b: float) -> float:
    return abs(_normalise_deg(a - b))


def _view_angles(dataset: Dataset, path: Path, assumptions: dict[str, Any]) -> tuple[float, float] | str:
    """``(lao_rao_deg, cranio_caudal_deg)`` from the tags, or the one-line reason there are none."""
    record = assumptions["geometry"]
    primary = _number(dataset, "PositionerPrimaryAngle", path)
    secondary = _number(dataset, "PositionerSecondaryAngle", path)
    view_position = _text(dataset, "ViewPosition")
    cranio_caudal = 0.0 if secondary is None else -secondary
    record["cranio_caudal_from"] = (
        f"-{_label('PositionerSecondaryAngle')}" if secondary is not None else "0 (no Positioner Secondary Angle)"
    )
    if primary is not None:
        lao_rao = _normalise_deg(primary + 180.0)
        record["angle_from"] = f"{_label('PositionerPrimaryAngle')} = {primary:g} (detector position) + 180"
        if view_position in VIEW_POSITIONS and (
            _angular_distance_deg(lao_rao, VIEW_POSITIONS[view_position]) > VIEW_POSITION_TOLERANCE_DEG
        ):
            _warn(
                assumptions,
                f"{path}: {_label('PositionerPrimaryAngle')} {primary:g} (lao_rao {lao_rao:g}) disagrees with "
                f"{_label('ViewPosition')} {view_position}; the angle is used",
            )
        return lao_rao, cranio_caudal
    if view_position is None:
        return (
            f"{path}: {_label('PositionerPrimaryAngle')} and {_label('ViewPosition')} missing: "
            "give the view angle with --geometry"
        )
    if view_position not in VIEW_POSITIONS:
        return (
            f"{path}: {_label('ViewPosition')} is {view_position!r}: expected AP, PA, RL or LL "
            f"(or a {_label('PositionerPrimaryAngle')}): give the geometry with --geometry"
        )
    record["angle_from"] = f"{_label('ViewPosition')} = {view_position}"
    return VIEW_POSITIONS[view_position], cranio_caudal


def _positive(dataset: Dataset, keyword: str, path: Path, count: int) -> tuple[float, ...] | str:
    """``count`` positive numbers from a tag, or the one-line reason why not."""
    value = _value(dataset, keyword)
    if value is None:
        return f"{path}: {_label(keyword)} missing: give it with --geometry"
    try:
        numbers = _numbers(value)
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(n) and n > 0 for n in numbers):
        return f"{path}: {_label(keyword)} is {value!r}: expected {count} positive number(s); give it with --geometry"
    return tuple(numbers)


def _pixel_spacing(dataset: Dataset, path: Path, assumptions: dict[str, Any]) -> tuple[float, float] | str:
    """Imager Pixel Spacing, else Pixel Spacing with a warning, else the one-line reason there is none."""
    imager = _positive(dataset, "ImagerPixelSpacing", path, 2)
    if isinstance(imager, tuple):
        assumptions["geometry"]["pixel_spacing_from"] = _label("ImagerPixelSpacing")
        return imager[0], imager[1]
    if _value(dataset, "ImagerPixelSpacing") is not None:  # present but malformed: no silent fallback
        return imager
    if _value(dataset, "PixelSpacing") is None:
        return (
            f"{path}: {_label('ImagerPixelSpacing')} missing (and no {_label('PixelSpacing')}): give it with --geometry"
        )
    fallback = _positive(dataset, "PixelSpacing", path, 2)
    if isinstance(fallback, str):
        return fallback
    assumptions["geometry"]["pixel_spacing_from"] = f"{_label('PixelSpacing')} (fallback)"
    _warn(
        assumptions,
        f"{path}: {_label('ImagerPixelSpacing')} missing: using {_label('PixelSpacing')}, "
        "which may be calibrated to the patient rather than the detector",
    )
    return fallback[0], fallback[1]


def _geometry(
    dataset: Dataset, path: Path, assumptions: dict[str, Any]
) -> tuple[CarmPose | None, tuple[float, float] | None, tuple[float, float] | None, str | None]:
    """``(carm, pixel_spacing_mm, (lao_rao, cranio_caudal) or None, geometry_error)`` from the tags."""
    record = assumptions["geometry"]
    angles = _view_angles(dataset, path, assumptions)
    spacing = _pixel_spacing(dataset, path, assumptions)
    detector = _positive(dataset, "DistanceSourceToDetector", path, 1)
    patient = _positive(dataset, "DistanceSourceToPatient", path, 1)
    reasons = [part for part in (angles, detector, patient, spacing) if isinstance(part, str)]
    spacing_mm = spacing if isinstance(spacing, tuple) else None
    angles_deg = angles if isinstance(angles, tuple) else None
    if reasons or not (isinstance(detector, tuple) and isinstance(patient, tuple) and spacing_mm and angles_deg):
        reason = reasons[0] if reasons else f"{path}: no geometry in the tags: give --geometry"
        record["source"] = "none: " + reason
        return None, spacing_mm, angles_deg, reason
    carm = CarmPose(
        lao_rao_deg=angles_deg[0],
        cranio_caudal_deg=angles_deg[1],
        source_isocenter_mm=patient[0],
        source_detector_mm=detector[0],
        pixel_spacing_mm=spacing_mm,
        isocenter_mm=None,
    )
    record.update(
        source="dicom tags",
        lao_rao_deg=carm.lao_rao_deg,
        cranio_caudal_deg=carm.cranio_caudal_deg,
        source_detector_mm=carm.source_detector_mm,
        source_isocenter_mm=carm.source_isocenter_mm,
        pixel_spacing_mm=list(carm.pixel_spacing_mm),
        isocenter="the atlas centre",
    )
    return carm, spacing_mm, angles_deg, None


def _dominant_letters(axis: np.ndarray) -> set[str]:
    """The Patient Orientation letters of the world directions closest to ``axis`` (ties: all)."""
    dots = {letter: float(direction @ axis) for letter, direction in _LETTER_DIRECTIONS.items()}
    best = max(dots.values())
    return {letter for letter, dot in dots.items() if dot > best - 1e-6}


def _orientation_flips(
    dataset: Dataset, path: Path, angles: tuple[float, float] | None, assumptions: dict[str, Any]
) -> tuple[int, ...]:
    """Axes to flip so that the image's axes are those of CONTRACT section 2 for the view."""
    record = assumptions["orientation"]
    value = _value(dataset, "PatientOrientation")
    label = _label("PatientOrientation")
    if value is None:
        record["note"] = f"{label} absent: the image is assumed to be in the contract's orientation"
        return ()
    parts = [str(part).strip().upper() for part in (value if not isinstance(value, str) else value.split("\\"))]
    text = "\\".join(parts)
    record["patient_orientation"] = text
    if len(parts) != 2 or not all(parts) or any(c not in _LETTER_DIRECTIONS for part in parts for c in part):
        raise InputError(f"{path}: {label} is '{text}': expected two values of the letters A P R L H F, like L\\F")
    if angles is None:
        record["note"] = f"{label} not checked: no view angle in the tags"
        return ()
    _, u_axis, v_axis = CarmPose(lao_rao_deg=angles[0], cranio_caudal_deg=angles[1]).axes_world()
    expected_u, expected_v = _dominant_letters(u_axis), _dominant_letters(v_axis)
    record["expected"] = "\\".join("/".join(sorted(letters)) for letters in (expected_u, expected_v))
    row_letter, column_letter = parts[0][0], parts[1][0]  # the principal letter of each value
    if row_letter in expected_v | {_OPPOSITE[c] for c in expected_v} and column_letter in expected_u | {
        _OPPOSITE[c] for c in expected_u
    }:
        raise InputError(
            f"{path}: {label} is '{text}': the image is transposed against the view "
            f"(expected {record['expected']}): only flips are undone, export the image unrotated"
        )
    flips = []
    for axis, letter, expected in ((1, row_letter, expected_u), (0, column_letter, expected_v)):
        if letter in expected:
            continue
        if _OPPOSITE[letter] in expected:
            flips.append(axis)
            continue
        raise InputError(
            f"{path}: {label} is '{text}': does not match the view (expected {record['expected']} "
            f"at lao_rao {angles[0]:g}, cranio_caudal {angles[1]:g})"
        )
    flips.sort()
    record["flipped"] = [_AXIS_NAMES[axis] for axis in flips]
    return tuple(flips)


def _laterality(dataset: Dataset, assumptions: dict[str, Any]) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(dataset, keyword)
        if value in ("L", "R"):
            assumptions["laterality"] = {"value": value, "from": _label(keyword)}
            return value
    assumptions["laterality"] = {"value": None, "from": "no Image Laterality / Laterality of L or R"}
    return None


def _new_assumptions(path: Path) -> dict[str, Any]:
    return {"file": str(path), "intensity": {}, "geometry": {}, "orientation": {}, "warnings": []}


def read_dicom_radiograph(path: str | Path, intensity: str = "auto", air_level: float | None = None) -> DicomRadiograph:
    """Read a clinic DICOM radiograph as a line integral in the contract's orientation (CONTRACT section 7).

    Args:
        path: the ``.dcm`` file.
        intensity: ``"auto"`` (Pixel Intensity Relationship decides: ``LIN`` is a transmission
            image, ``LOG`` or absent a line integral), ``"line-integral"`` or ``"transmission"``.
        air_level: the unattenuated (air) level of a transmission image, in the file's rescaled
            pixel values; estimated (:data:`AIR_PERCENTILE`) when ``None``.

    Raises:
        InputError: one line naming the file and the tag: not DICOM, colour, several frames,
            compressed without a decoder, constant or NaN image, bad orientation.
    """
    path = Path(path)
    if intensity not in INTENSITY_ROUTES:
        raise InputError(f"intensity: expected one of {', '.join(INTENSITY_ROUTES)}, got {intensity!r}")
    if air_level is not None and not (math.isfinite(air_level)):
        raise InputError(f"air level: expected a finite number, got {air_level!r}")
    dataset = _read_dataset(path, pixels=True)
    _check_pixel_format(dataset, path)
    assumptions = _new_assumptions(path)
    assumptions["intensity"]["requested"] = intensity
    image = _line_integral(dataset, path, intensity, air_level, assumptions)
    carm, spacing, angles, geometry_error = _geometry(dataset, path, assumptions)
    flips = _orientation_flips(dataset, path, angles, assumptions)
    if flips:
        image = np.flip(image, axis=flips)
    assumptions["flips"] = list(flips)
    laterality = _laterality(dataset, assumptions)
    return DicomRadiograph(
        path=str(path),
        image=np.ascontiguousarray(image, dtype=np.float32),
        pixel_spacing_mm=spacing,
        carm=carm,
        laterality=laterality,
        flips=flips,
        assumptions=assumptions,
        geometry_error=geometry_error,
    )


def dicom_view(radiograph: DicomRadiograph, name: str, default_isocenter_mm: np.ndarray | None) -> ProjectionView:
    """The projection view from a radiograph's tags (``ProjectionView.from_carm``).

    Args:
        radiograph: from :func:`read_dicom_radiograph`.
        name: the view's name (``"AP"``, ``"LAT"``).
        default_isocenter_mm: ``(3,)`` world mm, the atlas centre (the tags give no isocentre).

    Raises:
        InputError: a tag the geometry needs is missing (asks for ``--geometry``).
    """
    return _carm_view(
        radiograph.path, radiograph.carm, radiograph.geometry_error, radiograph.image_shape, default_isocenter_mm, name
    )


def _carm_view(
    source: str | Path,
    carm: CarmPose | None,
    geometry_error: str | None,
    image_shape: tuple[int, int],
    default_isocenter_mm: np.ndarray | None,
    name: str,
) -> ProjectionView:
    if carm is None:
        raise InputError(geometry_error or f"{source}: no geometry in the tags: give --geometry")
    try:
        return ProjectionView.from_carm(carm, image_shape, default_isocenter_mm, name)
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None


def _header_view(path: Path, name: str, default_isocenter_mm: np.ndarray | None) -> ProjectionView:
    dataset = _read_dataset(path, pixels=False)
    image_shape = int(_require(dataset, "Rows", path)), int(_require(dataset, "Columns", path))
    carm, _, _, geometry_error = _geometry(dataset, path, _new_assumptions(path))
    return _carm_view(path, carm, geometry_error, image_shape, default_isocenter_mm, name)


def views_from_dicom(
    ap_path: str | Path, lat_path: str | Path, default_isocenter_mm: np.ndarray | None
) -> dict[str, ProjectionView]:
    """The ``AP`` and ``LAT`` views from two DICOM files' tags (headers only; pixels are not decoded).

    Args:
        ap_path, lat_path: the two ``.dcm`` files.
        default_isocenter_mm: ``(3,)`` world mm, the atlas centre.
    """
    return {
        "AP": _header_view(Path(ap_path), "AP", default_isocenter_mm),
        "LAT": _header_view(Path(lat_path), "LAT", default_isocenter_mm),
    }


def write_dicom_dataset(path: str | Path, dataset: Dataset) -> None:
    """Write a dataset (with its ``file_meta``) as a DICOM Part 10 file, atomically."""
    with atomic_path(Path(path)) as temporary:
        if _PYDICOM_MAJOR >= 3:
            dataset.save_as(temporary, enforce_file_format=True)
        else:  # pydicom 2.x takes the encoding from the dataset's attributes
            syntax = dataset.file_meta.TransferSyntaxUID
            dataset.is_little_endian, dataset.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
            dataset.save_as(temporary, write_like_original=False)


def _ds(value: float) -> DSfloat:
    return DSfloat(value, auto_format=True)


def write_dicom_radiograph(
    path: str | Path,
    image: np.ndarray,
    *,
    modality: str = "DX",
    view_position: str | None = "AP",
    primary_angle_deg: float | None = None,
    secondary_angle_deg: float | None = None,
    source_detector_mm: float | None = 1000.0,
    source_patient_mm: float | None = 925.0,
    imager_pixel_spacing_mm: tuple[float, float] | None = (0.93, 0.93),
    pixel_spacing_mm: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    intensity_relationship: str | None = "LOG",
    intensity_sign: int | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    patient_orientation: str | None = None,
    image_laterality: str | None = None,
    laterality: str | None = None,
    bits_stored: int = 16,
) -> None:
    """Write a radiograph as an uncompressed DICOM file (explicit VR little endian, uint16), atomically.

    Each keyword fills the tag of the same meaning; ``None`` leaves the tag out.

    Args:
        path: the ``.dcm`` file.
        image: ``(rows, cols)`` (or ``(frames, rows, cols)``) pixel values after the rescale, i.e. the
            values the file means; stored as ``round((image - intercept) / slope)``, which must fit
            uint16.
        modality: ``"DX"`` or ``"CR"`` (SOP class: digital X-ray for presentation, computed radiography).
        view_position: View Position (0018,5101), e.g. ``"AP"``, ``"PA"``, ``"RL"``, ``"LL"``.
        primary_angle_deg, secondary_angle_deg: Positioner Primary / Secondary Angle (0018,1510/1511).
        source_detector_mm, source_patient_mm: Distance Source to Detector / Patient (0018,1110/1111).
        imager_pixel_spacing_mm, pixel_spacing_mm: ``(row, col)`` Imager Pixel Spacing (0018,1164) /
            Pixel Spacing (0028,0030).
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        intensity_relationship, intensity_sign: Pixel Intensity Relationship (0028,1040) ``"LIN"`` /
            ``"LOG"`` and its Sign (0028,1041) +1 / -1.
        rescale_slope, rescale_intercept: Rescale Slope / Intercept (0028,1053/1052).
        patient_orientation: Patient Orientation (0020,0020), e.g. ``"L\\F"``.
        image_laterality, laterality: Image Laterality (0020,0062) / Laterality (0020,0060).
        bits_stored: Bits Stored (0028,0101), 1 to 16 (High Bit one less); the stored values must fit.
    """
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality: expected 'DX' or 'CR', got {modality!r}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored: expected 1 to 16, got {bits_stored}")
    values = np.asarray(image, dtype=np.float64)
    if values.ndim not in (2, 3):
        raise ValueError(f"image: expected (rows, cols) or (frames, rows, cols), got {values.shape}")
    slope = 1.0 if rescale_slope is None else rescale_slope
    intercept = 0.0 if rescale_intercept is None else rescale_intercept
    stored = np.round((values - intercept) / slope)
    top = 2**bits_stored - 1
    if not np.all(np.isfinite(stored)) or stored.min() < 0 or stored.max() > top:
        raise ValueError(f"image: (image - intercept) / slope must lie in [0, {top}] ({bits_stored} bits stored)")

    sop_class = DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.preamble = b"\0" * 128
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    dataset.PatientName = "Anonymous"
    dataset.PatientID = "biplanar"
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    optional_text = {
        "ViewPosition": view_position,
        "PatientOrientation": None if patient_orientation is None else patient_orientation.split("\\"),
        "ImageLaterality": image_laterality,
        "Laterality": laterality,
        "PixelIntensityRelationship": intensity_relationship,
    }
    for keyword, text in optional_text.items():
        if text is not None:
            setattr(dataset, keyword, text)
    optional_numbers: dict[str, float | tuple[float, float] | None] = {
        "PositionerPrimaryAngle": primary_angle_deg,
        "PositionerSecondaryAngle": secondary_angle_deg,
        "DistanceSourceToDetector": source_detector_mm,
        "DistanceSourceToPatient": source_patient_mm,
        "ImagerPixelSpacing": imager_pixel_spacing_mm,
        "PixelSpacing": pixel_spacing_mm,
        "RescaleSlope": rescale_slope,
        "RescaleIntercept": rescale_intercept,
    }
    for keyword, number in optional_numbers.items():
        if isinstance(number, tuple):
            setattr(dataset, keyword, [_ds(item) for item in number])
        elif number is not None:
            setattr(dataset, keyword, _ds(number))
    if intensity_sign is not None:
        dataset.PixelIntensityRelationshipSign = int(intensity_sign)
    if values.ndim == 3:
        dataset.NumberOfFrames = values.shape[0]
    dataset.Rows, dataset.Columns = values.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = 0
    dataset.PixelData = stored.astype("<u2").tobytes()
    dataset["PixelData"].VR = "OW"
    write_dicom_dataset(path, dataset)


def view_tags(view: ProjectionView, side: str = "right") -> dict[str, Any]:
    """The geometry tags (docs/contract.md section 7) that :func:`read_dicom_radiograph` reads back as ``view``.

    View Position is the nearest of :data:`VIEW_POSITIONS`; Positioner Primary Angle (the detector's
    position, ``lao_rao_deg - 180``) only when the view is not exactly at it, Positioner Secondary
    Angle (``-cranio_caudal_deg``) only when it is not 0; Patient Orientation the letters of the
    view's detector axes; Image Laterality that of ``side``.

    Args:
        view: a view built from a C-arm pose (``view.carm``); the isocentre is not a tag.
        side: ``"right"`` or ``"left"``, the hip imaged.

    Returns:
        keyword -> value for :func:`write_dicom_radiograph`.

    Raises:
        ValueError: a view without its C-arm pose.
    """
    carm = view.carm
    if carm is None:
        raise ValueError(f"view {view.name or '?'}: no C-arm pose to write as DICOM tags")
    lao_rao = _normalise_deg(carm.lao_rao_deg)
    position = min(VIEW_POSITIONS, key=lambda name: _angular_distance_deg(lao_rao, VIEW_POSITIONS[name]))
    exact = _angular_distance_deg(lao_rao, VIEW_POSITIONS[position]) < 1e-9
    _, u_axis, v_axis = carm.axes_world()
    return {
        "view_position": position,
        "primary_angle_deg": None if exact else _normalise_deg(lao_rao - 180.0),
        "secondary_angle_deg": None if carm.cranio_caudal_deg == 0 else -carm.cranio_caudal_deg,
        "source_detector_mm": carm.source_detector_mm,
        "source_patient_mm": carm.source_isocenter_mm,
        "imager_pixel_spacing_mm": tuple(carm.pixel_spacing_mm),
        "patient_orientation": f"{min(_dominant_letters(u_axis))}\\{min(_dominant_letters(v_axis))}",
        "image_laterality": "L" if side == "left" else "R",
    }


def write_dicom_view(
    path: str | Path,
    image: np.ndarray,
    view: ProjectionView,
    *,
    side: str = "right",
    photometric: str = "MONOCHROME2",
    intensity_relationship: str | None = "LOG",
    intensity_sign: int | None = None,
    bits_stored: int = 16,
) -> None:
    """Write a radiograph of ``view`` as DICOM with its geometry tags (:func:`view_tags`), atomically.

    Args:
        path: the ``.dcm`` file.
        image: ``(rows, cols)`` pixel values as stored (integers in ``[0, 2^bits_stored - 1]``), in
            the contract's orientation of the view (docs/contract.md section 2).
        view: the view (with its C-arm pose); ``image`` has its ``image_shape``.
        side, photometric, intensity_relationship, intensity_sign, bits_stored: see
            :func:`view_tags` and :func:`write_dicom_radiograph`.
    """
    if tuple(np.shape(image)) != view.image_shape:
        raise ValueError(f"image: expected the view's shape {list(view.image_shape)}, got {list(np.shape(image))}")
    write_dicom_radiograph(
        path,
        image,
        **view_tags(view, side),
        photometric=photometric,
        intensity_relationship=intensity_relationship,
        intensity_sign=intensity_sign,
        bits_stored=bits_stored,
    )
