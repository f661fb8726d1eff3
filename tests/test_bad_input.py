"""The bad-input battery (issue 18): every command, fed one defect at a time, refuses it.

Each case starts from a valid command line (small generated inputs: a one-subject tiny dataset, its
CT, radiographs and geometry, an untrained tiny model) and breaks one thing: a file that is missing,
empty, truncated, corrupt or of another format; an array with NaN or Inf values, all zero or constant
or of the wrong shape; a number out of range; an unknown name; an output that cannot be written or
already exists. The command must exit 2 (never 0, never 1 with a traceback) with one last line
``biplanar: error: ...`` naming the file or field, and write nothing: the output does not exist
afterwards and no temporary file (``*.partial``, ``*.part*``) is left.

Options that typer itself checks (choices, ``min=``) are refused by click before biplanar runs: exit 2
with click's usage message naming the option (kind ``USAGE``).

Every case is refused before any heavy work (a few tenths of a second each).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.config import load_config
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.io.volumes import read_volume, write_volume

ERROR, USAGE = "error", "usage"
Value = str | Callable[[Path, Path], Path | str] | None  # text ({v}: valid inputs, {t}: tmp_path), or a maker


@dataclass(frozen=True)
class Case:
    """One bad command line: ``command`` with its valid options, ``changes`` applied (``None`` drops an
    option; a callable ``(valid, tmp) -> value`` makes a defective file), and the text its error names."""

    command: str
    name: str
    changes: dict[str, Value]
    names: str
    kind: str = ERROR
    flags: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        return f"{self.command}-{self.name}"


# --- the valid inputs ---------------------------------------------------------------------------
SUBJECT = "{v}/data/subjects/case_00000"
VALID: dict[str, dict[str, str]] = {
    "drr": {"--volume": f"{SUBJECT}/ct.nii.gz", "--geometry": f"{SUBJECT}/geometry.json", "--out": "{t}/out.npy"},
    "geometry": {"--out": "{t}/out.json"},
    "atlas": {"--out": "{t}/out", "--preset": "tiny"},
    "simulate": {"--out": "{t}/out", "--n": "2", "--seed": "0", "--preset": "tiny", "--scene": "grid"},
    "train": {"--config": "tiny", "--data": "{v}/data", "--out": "{t}/out", "--epochs": "1"},
    "train-baseline": {"--method": "kasten", "--config": "tiny", "--data": "{v}/data", "--out": "{t}/out"},
    "train-pose": {"--config": "sopi_tiny", "--network": "rtpi", "--out": "{t}/out", "--max-steps": "1"},
    "register": {
        "--geometry": f"{SUBJECT}/geometry.json",
        "--ap": f"{SUBJECT}/AP.npy",
        "--lat": f"{SUBJECT}/LAT.npy",
        "--ap-mask": f"{SUBJECT}/AP_mask.npy",
        "--lat-mask": f"{SUBJECT}/LAT_mask.npy",
        "--model": "{v}/model.pt",
        "--out": "{t}/out",
    },
    "segment": {"--image": f"{SUBJECT}/AP.npy", "--geometry": f"{SUBJECT}/geometry.json", "--out": "{t}/out.png"},
    "preprocess": {
        "--ct": f"{SUBJECT}/ct.nii.gz",
        "--labels": f"{SUBJECT}/labels.nii.gz",
        "--label": "1",
        "--side": "right",
        "--preset": "tiny",
        "--out": "{t}/out",
    },
    "demo": {"--out": "{t}/out", "--model": "{v}/model.pt"},
    "evaluate": {"--model": "{v}/model.pt", "--data": "{v}/data", "--split": "train", "--out": "{t}/out"},
    "pose": {
        "--ct": f"{SUBJECT}/ct.nii.gz",
        "--geometry": f"{SUBJECT}/geometry.json",
        "--ap": f"{SUBJECT}/AP.npy",
        "--out": "{t}/out",
        "--evaluations": "1",
        "--refine-steps": "0",
    },
    "evaluate-pose": {
        "--out": "{t}/out",
        "--datasets": "femur",
        "--ranges": "small",
        "--n": "1",
        "--evaluations": "1",
        "--refine-steps": "0",
        "--max-levels": "1",
    },
    "experiments": {"--out": "{t}/out", "--budget": "tiny"},
}
OUTPUTS = {name: options["--out"] for name, options in VALID.items()}


@pytest.fixture(scope="module")
def valid(tmp_path_factory, tiny_model) -> Path:
    """The valid inputs: a one-subject tiny dataset (grid scene) and the untrained tiny model."""
    folder = tmp_path_factory.mktemp("valid")
    simulate_dataset(folder / "data", 1, 0, SimulationConfig(preset="tiny", scene="grid"), progress=False)
    shutil.copy(tiny_model, folder / "model.pt")
    return folder


# --- makers of defective files (each ``(valid, tmp) -> path``) -------------------------------------
SOPI = Path(__file__).resolve().parents[1] / "src/biplanar/resources/models/sopi_lite"


def expand(value: str, valid: Path, tmp: Path) -> str:
    """``value`` with ``{v}`` (the valid inputs), ``{t}`` (the case's tmp_path), ``{sopi}`` and ``{fine}``
    (the bundled SOPI checkpoints) filled in."""
    return value.format(v=valid, t=tmp, sopi=SOPI / "rtpi.pt", fine=SOPI / "fine.pt")


def _source(valid: Path, relative: str) -> Path:
    return Path(expand(relative, valid, Path()))


def missing(name: str) -> Value:
    return lambda valid, tmp: tmp / "inputs" / name


def _written(tmp: Path, name: str) -> Path:
    path = tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def raw(name: str, data: bytes) -> Value:
    """A file ``name`` holding ``data``."""

    def make(valid: Path, tmp: Path) -> Path:
        path = _written(tmp, name)
        path.write_bytes(data)
        return path

    return make


def empty(name: str) -> Value:
    return raw(name, b"")


def corrupt(name: str) -> Value:
    return raw(name, b"\x00\xffthis is not a real file\x01" * 16)


def truncated(relative: str) -> Value:
    """The first half of the valid file ``relative``."""

    def make(valid: Path, tmp: Path) -> Path:
        source = _source(valid, relative)
        path = _written(tmp, source.name)
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    return make


def array(name: str, values: np.ndarray) -> Value:
    def make(valid: Path, tmp: Path) -> Path:
        path = _written(tmp, name)
        np.save(path, values)
        return path

    return make


def like_image(relative: str, change: Callable[[np.ndarray], np.ndarray]) -> Value:
    """The valid ``.npy`` image ``relative`` changed by ``change``."""

    def make(valid: Path, tmp: Path) -> Path:
        source = _source(valid, relative)
        path = _written(tmp, source.name)
        np.save(path, change(np.load(source)))
        return path

    return make


def like_volume(relative: str, change: Callable[[np.ndarray], np.ndarray]) -> Value:
    """The valid NIfTI ``relative`` with its values changed by ``change`` (same grid)."""

    def make(valid: Path, tmp: Path) -> Path:
        source = _source(valid, relative)
        data, grid = read_volume(source)
        path = _written(tmp, source.name)
        write_volume(path, change(data), grid)
        return path

    return make


def nifti_2d(name: str) -> Value:
    def make(valid: Path, tmp: Path) -> Path:
        import nibabel as nib

        path = _written(tmp, name)
        nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(path))
        return path

    return make


def text(name: str, content: str) -> Value:
    return raw(name, content.encode())


def json_file(name: str, document) -> Value:
    return text(name, json.dumps(document))


def like_json(relative: str, change: Callable[[dict], None]) -> Value:
    """The valid JSON file ``relative`` changed in place by ``change``."""

    def make(valid: Path, tmp: Path) -> Path:
        source = _source(valid, relative)
        document = json.loads(source.read_text())
        change(document)
        path = _written(tmp, source.name)
        path.write_text(json.dumps(document))
        return path

    return make


def yaml_file(name: str, document) -> Value:
    return text(name, yaml.safe_dump(document))


def set_view(key: str, value) -> Callable[[dict], None]:
    """``change`` for :func:`like_json` of a geometry file: ``views.AP[key] = value``."""

    def change(document: dict) -> None:
        document["views"]["AP"][key] = value

    return change


def _matrix_with(value: float) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        document["views"]["AP"]["projection_matrix"] = [[value] * 4] * 3
        document["views"]["AP"].pop("carm", None)

    return change


def broken_dataset(change: Callable[[Path], None]) -> Value:
    """A copy of the valid dataset changed by ``change(root)``."""

    def make(valid: Path, tmp: Path) -> Path:
        root = tmp / "inputs" / "data"
        shutil.copytree(valid / "data", root)
        change(root)
        return root

    return make


def _subject_file(name: str, data: bytes | None = None, values: np.ndarray | None = None) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / "subjects" / "case_00000" / name
        if values is not None:
            np.save(path, values)
        elif data is None:
            path.unlink()
        else:
            path.write_bytes(data)

    return change


def _dataset_json(change: Callable[[dict], None] | None = None, data: bytes | None = None) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "dataset.json"
        if data is not None:
            path.write_bytes(data)
            return
        document = json.loads(path.read_text())
        if change is not None:
            change(document)
        path.write_text(json.dumps(document))

    return apply


def _set_preset(preset: str) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        document["config"]["preset"] = preset

    return change


def _split(data: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / "split.json").write_text(data)

    return change


def _remove(relative: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        target = root / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return change


def a_file(valid: Path, tmp: Path) -> Path:
    """A regular file where a folder is expected."""
    path = _written(tmp, "a_file")
    path.write_text("x")
    return path


def under_a_file(name: str) -> Value:
    """An output path inside a regular file: it cannot be written."""

    def make(valid: Path, tmp: Path) -> Path:
        return a_file(valid, tmp) / name

    return make


def full_folder(valid: Path, tmp: Path) -> Path:
    """An existing output folder that holds a file."""
    path = tmp / "inputs" / "full"
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("mine")
    return path


def existing(name: str) -> Value:
    """An output file that exists already (refused without ``--overwrite``)."""
    return raw(name, b"an earlier result")


def a_folder(valid: Path, tmp: Path) -> Path:
    """An existing folder where an output file is expected."""
    path = tmp / "inputs" / "folder.npy"
    path.mkdir(parents=True)
    return path


def old_run(valid: Path, tmp: Path) -> Path:
    """A run folder holding ``last.pt`` already (refused without ``--resume``)."""
    path = tmp / "inputs" / "run"
    path.mkdir(parents=True)
    (path / "last.pt").write_bytes(b"x")
    return path


def sopi_yaml(section: str, name: str, value) -> Value:
    return yaml_file("sopi.yaml", {section: {name: value}})


def tiny_yaml(section: str, name: str, value) -> Value:
    """The tiny preset's config with ``section.name = value``."""
    document = json.loads(json.dumps(load_config("tiny").to_dict()))  # tuples as lists
    document[section][name] = value
    return yaml_file("config.yaml", document)


# --- the defects of each kind of input -------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
IMAGE = f"{SUBJECT}/AP.npy"


def image_defects(option: str, relative: str = IMAGE) -> list[tuple[str, dict[str, Value], str]]:
    """Defects of a radiograph option (the valid file ``relative``)."""
    name = Path(relative).name
    return [
        ("missing", {option: missing(name)}, name),
        ("empty", {option: empty(name)}, name),
        ("corrupt", {option: corrupt(name)}, name),
        ("truncated", {option: truncated(relative)}, name),
        ("wrong-format", {option: text("image.txt", "1 2 3")}, "image.txt"),
        ("nan", {option: like_image(relative, lambda a: np.where(a > a.mean(), NAN, a))}, name),
        ("inf", {option: like_image(relative, lambda a: np.where(a > a.mean(), INF, a))}, name),
        ("3d", {option: like_image(relative, lambda a: np.stack([a, a, a]))}, name),
        ("wrong-shape", {option: like_image(relative, lambda a: a[:-3, :-5])}, name),
        ("all-zero", {option: like_image(relative, np.zeros_like)}, name),
        ("constant", {option: like_image(relative, lambda a: np.full_like(a, 2.5))}, name),
    ]


def volume_defects(option: str, relative: str) -> list[tuple[str, dict[str, Value], str]]:
    """Defects of a NIfTI volume option (the valid file ``relative``)."""
    name = Path(relative).name
    return [
        ("missing", {option: missing(name)}, name),
        ("empty", {option: empty(name)}, name),
        ("corrupt", {option: corrupt(name)}, name),
        ("truncated", {option: truncated(relative)}, name),
        ("wrong-format", {option: json_file("volume.json", {"a": 1})}, "volume.json"),
        ("nan", {option: like_volume(relative, lambda a: np.where(a > a.mean(), NAN, a))}, name),
        ("inf", {option: like_volume(relative, lambda a: np.where(a > a.mean(), -INF, a))}, name),
        ("2d", {option: nifti_2d(name)}, name),
    ]


GEOMETRY = f"{SUBJECT}/geometry.json"


def geometry_defects(option: str) -> list[tuple[str, dict[str, Value], str]]:
    """Defects of a ``geometry.json`` option."""
    return [
        ("geometry-missing", {option: missing("geometry.json")}, "geometry.json"),
        ("geometry-empty", {option: empty("geometry.json")}, "geometry.json"),
        ("geometry-corrupt", {option: corrupt("geometry.json")}, "geometry.json"),
        ("geometry-truncated", {option: truncated(GEOMETRY)}, "geometry.json"),
        ("geometry-wrong-format", {option: array("geometry.npy", np.zeros(3))}, "geometry.npy"),
        ("geometry-nan", {option: like_json(GEOMETRY, _matrix_with(NAN))}, "geometry.json"),
        ("geometry-shape", {option: like_json(GEOMETRY, set_view("image_shape", [64]))}, "image_shape"),
        ("geometry-no-views", {option: json_file("geometry.json", {"views": {}})}, "geometry.json"),
    ]


def checkpoint_defects(option: str) -> list[tuple[str, dict[str, Value], str]]:
    """Defects of a checkpoint option."""
    return [
        ("model-missing", {option: missing("model.pt")}, "model.pt"),
        ("model-empty", {option: empty("model.pt")}, "model.pt"),
        ("model-corrupt", {option: corrupt("model.pt")}, "model.pt"),
        ("model-truncated", {option: truncated("{v}/model.pt")}, "model.pt"),
        ("model-wrong-format", {option: yaml_file("model.pt", {"a": 1})}, "model.pt"),
    ]


def dataset_defects(option: str, few: bool = False) -> list[tuple[str, dict[str, Value], str]]:
    """Defects of a dataset folder option (``few``: the dataset-level ones only)."""
    cases = [
        ("data-missing", {option: missing("data")}, "data"),
        ("data-a-file", {option: a_file}, "a_file"),
        ("data-no-manifest", {option: broken_dataset(_remove("dataset.json"))}, "dataset.json"),
        ("data-manifest-empty", {option: broken_dataset(_dataset_json(data=b""))}, "dataset.json"),
        ("data-manifest-corrupt", {option: broken_dataset(_dataset_json(data=b"{not json"))}, "dataset.json"),
        ("data-manifest-list", {option: broken_dataset(_dataset_json(data=b"[1, 2]"))}, "dataset.json"),
        ("data-preset-path", {option: broken_dataset(_dataset_json(_set_preset("../etc")))}, "preset"),
        ("data-no-split", {option: broken_dataset(_remove("split.json"))}, "split.json"),
        ("data-split-corrupt", {option: broken_dataset(_split("{"))}, "split.json"),
        ("data-split-path", {option: broken_dataset(_split('{"train": ["../x"], "val": [], "test": []}'))}, "split"),
    ]
    if few:
        return cases
    return cases + [
        ("data-preset-other", {option: broken_dataset(_dataset_json(_set_preset("lite")))}, "grid_preset"),
        ("data-subject-missing", {option: broken_dataset(_remove("subjects/case_00000"))}, "case_00000"),
        ("data-subject-incomplete", {option: broken_dataset(_subject_file("AP_masked.npy"))}, "case_00000"),
        ("data-ct-corrupt", {option: broken_dataset(_subject_file("ct.nii.gz", b"garbage"))}, "ct.nii.gz"),
        ("data-ct-empty", {option: broken_dataset(_subject_file("ct.nii.gz", b""))}, "ct.nii.gz"),
        ("data-labels-corrupt", {option: broken_dataset(_subject_file("labels.nii.gz", b"x" * 99))}, "labels.nii.gz"),
        ("data-geometry-corrupt", {option: broken_dataset(_subject_file("geometry.json", b"{"))}, "geometry.json"),
        (
            "data-image-nan",
            {option: broken_dataset(_subject_file("AP_masked.npy", values=np.full((48, 32), NAN, np.float32)))},
            "AP_masked.npy",
        ),
        (
            "data-image-3d",
            {option: broken_dataset(_subject_file("AP_masked.npy", values=np.zeros((2, 48, 32), np.float32)))},
            "AP_masked.npy",
        ),
        ("data-image-corrupt", {option: broken_dataset(_subject_file("AP_masked.npy", b"\x93NUMPY"))}, "AP_masked"),
    ]


def output_defects(kind: str, name: str = "out") -> list[tuple[str, dict[str, Value], str]]:
    """Defects of ``--out``: ``file`` (an output file) or ``folder`` (a new-or-empty folder) or ``run``."""
    cases = [("out-unwritable", {"--out": under_a_file(name)}, "a_file")]
    if kind == "file":
        cases += [
            ("out-is-a-folder", {"--out": a_folder}, "folder.npy"),
            ("out-exists", {"--out": existing(name)}, name),
        ]
    if kind == "folder":
        cases += [("out-exists", {"--out": full_folder}, "full"), ("out-is-a-file", {"--out": a_file}, "a_file")]
    if kind == "run":
        cases += [("out-holds-a-run", {"--out": old_run}, "--resume"), ("out-is-a-file", {"--out": a_file}, "a_file")]
    return cases


def usage(option: str, value: str) -> tuple[str, dict[str, Value], str, str]:
    """A value typer refuses itself (a choice or a bound): click's usage error naming ``option``."""
    return (f"{option.strip('-')}-{value}", {option: value}, option, USAGE)


def table() -> list[Case]:
    """Every case: command -> its defects."""
    rows: dict[str, list[tuple]] = {
        "drr": [
            *volume_defects("--volume", f"{SUBJECT}/ct.nii.gz"),
            *geometry_defects("--geometry"),
            ("view-unknown", {"--view": "OBLIQUE"}, "OBLIQUE"),
            ("out-suffix", {"--out": "{t}/out.jpg"}, "out.jpg"),
            ("preview-suffix", {"--preview": "{t}/preview.jpg"}, "preview.jpg"),
            ("preview-unwritable", {"--preview": under_a_file("preview.png")}, "preview.png"),
            ("preview-exists", {"--preview": existing("preview.png")}, "preview.png"),
            ("mu-water-nan", {"--mu-water": "nan"}, "mu_water"),
            ("mu-water-negative", {"--mu-water": "-0.02"}, "mu_water"),
            *output_defects("file", "out.npy"),
            usage("--mode", "xray"),
            usage("--units", "kelvin"),
            usage("--samples", "0"),
            usage("--kvp", "500"),
            usage("--photons", "0"),
        ],
        "geometry": [
            ("ap-angle-nan", {"--ap-angle": "nan"}, "angle"),
            ("lat-angle-inf", {"--lat-angle": "inf"}, "angle"),
            ("rows-huge", {"--rows": "100000"}, "image_shape"),
            usage("--pixel-spacing", "nan"),
            ("pixel-spacing-inf", {"--pixel-spacing": "inf"}, "pixel_spacing"),
            ("out-suffix", {"--out": "{t}/out.txt"}, "out.txt"),
            ("dicom-missing", {"--from-dicom": None}, "AP.dcm", ERROR, ("--from-dicom", "{t}/AP.dcm", "{t}/LAT.dcm")),
            *output_defects("file", "out.json"),
            (
                "dicom-out-exists",
                {"--out": existing("out.json")},
                "out.json",
                ERROR,
                ("--from-dicom", "{t}/AP.dcm", "{t}/LAT.dcm"),
            ),
            usage("--rows", "0"),
            usage("--cols", "-4"),
            usage("--pixel-spacing", "0"),
        ],
        "atlas": [
            ("preset-unknown", {"--preset": "huge"}, "preset"),
            ("preset-path", {"--preset": "../../etc"}, "preset"),
            ("labels-without-ct", {"--labels": "{v}/x.nii.gz"}, "--labels"),
            ("ct-without-labels", {"--from-ct": f"{SUBJECT}/ct.nii.gz"}, "--from-ct"),
            ("ct-and-dataset", {"--from-ct": f"{SUBJECT}/ct.nii.gz", "--from-dataset": "{v}/data"}, "--from-dataset"),
            *[
                (
                    f"from-ct-{name}",
                    {"--from-ct": maker, "--labels": f"{SUBJECT}/labels.nii.gz", "--label": "1", "--side": "right"},
                    what,
                )
                for name, change, what in volume_defects("--from-ct", f"{SUBJECT}/ct.nii.gz")[:5]
                for maker in change.values()
            ],
            *[(f"from-{name}", change, what) for name, change, what in dataset_defects("--from-dataset", few=True)],
            ("out-unwritable", {"--out": under_a_file("atlas")}, "a_file"),
            ("out-is-a-file", {"--out": a_file}, "a_file"),
            ("out-exists", {"--out": full_folder}, "full"),
            ("overwrite-from-dataset", {"--from-dataset": "{v}/data"}, "--overwrite", ERROR, ("--overwrite",)),
            usage("--side", "middle"),
        ],
        "simulate": [
            ("n-huge", {"--n": str(10**12)}, "n"),
            ("preset-unknown", {"--preset": "huge"}, "preset"),
            ("preset-path", {"--preset": "../lite"}, "preset"),
            ("mode-unknown", {"--mode": "xray"}, "mode"),
            ("scene-unknown", {"--scene": "moon"}, "scene"),
            ("shapes-unknown", {"--shapes": "cubes"}, "shapes"),
            ("photons-zero", {"--photons": "0"}, "photons"),
            ("photons-nan", {"--photons": "nan"}, "photons"),
            ("kvp-low", {"--kvp": "5"}, "kvp"),
            ("kvp-nan", {"--kvp": "nan"}, "kvp"),
            ("aluminium-negative", {"--aluminium-mm": "-1"}, "aluminium"),
            ("aluminium-inf", {"--aluminium-mm": "inf"}, "aluminium"),
            ("workers-huge", {"--workers": "100000"}, "workers"),
            ("pose-angle-huge", {"--pose-angle-deg": "45"}, "pose_angle_deg"),
            ("pose-angle-nan", {"--pose-angle-deg": "nan"}, "pose_angle_deg"),
            ("pose-shift-negative", {"--pose-shift-mm": "-1"}, "pose_shift_mm"),
            ("off-model-negative", {"--off-model-mm": "-1"}, "off_model_mm"),
            ("off-model-nan", {"--off-model-mm": "nan"}, "off_model_mm"),
            ("pose-with-from-ct", {"--from-ct": "{v}/data", "--n": None, "--pose-angle-deg": "20"}, "--pose-angle-deg"),
            ("from-ct-with-n", {"--from-ct": "{v}/data"}, "--n"),
            ("from-ct-missing", {"--from-ct": missing("cts"), "--n": None}, "cts"),
            ("from-ct-empty", {"--from-ct": lambda v, t: _written(t, "cts/x").parent, "--n": None}, "cts"),
            ("femur-labels-bad", {"--from-ct": "{v}/data", "--n": None, "--femur-labels": "up=3"}, "femur"),
            ("keep-sides-without-ct", {}, "--keep-sides", ERROR, ("--keep-sides",)),
            ("out-other-dataset", {"--out": broken_dataset(lambda root: None), "--seed": "5"}, "dataset.json"),
            ("out-unwritable", {"--out": under_a_file("data")}, "a_file"),
            ("out-is-a-file", {"--out": a_file}, "a_file"),
            usage("--n", "0"),
            usage("--seed", "-1"),
            usage("--workers", "0"),
            usage("--geometry", "sideways"),
        ],
        "train": [
            ("config-missing", {"--config": missing("config.yaml")}, "config.yaml"),
            ("config-unknown-preset", {"--config": "huge"}, "huge"),
            ("config-empty", {"--config": empty("config.yaml")}, "config.yaml"),
            ("config-corrupt", {"--config": text("config.yaml", "a: [b\n  - :")}, "config.yaml"),
            ("config-not-a-mapping", {"--config": text("config.yaml", "- 1\n- 2\n")}, "config.yaml"),
            ("config-unknown-field", {"--config": tiny_yaml("training", "speed", 3)}, "speed"),
            ("config-epochs-zero", {"--config": tiny_yaml("training", "epochs", 0), "--epochs": None}, "epochs"),
            ("config-lr-nan", {"--config": tiny_yaml("training", "learning_rate", NAN)}, "learning_rate"),
            ("config-lr-negative", {"--config": tiny_yaml("training", "learning_rate", -1e-4)}, "learning_rate"),
            ("config-weight-negative", {"--config": tiny_yaml("loss", "smoothness_weight", -1.0)}, "smoothness"),
            ("config-weight-inf", {"--config": tiny_yaml("loss", "smoothness_weight", INF)}, "smoothness"),
            ("config-batch-huge", {"--config": tiny_yaml("training", "batch_size", 10**6)}, "batch_size"),
            *dataset_defects("--data"),
            ("data-and-on-the-fly", {"--on-the-fly": "3"}, "data"),
            ("resume-without-run", {}, "last.pt", ERROR, ("--resume",)),
            ("init-missing", {"--init": missing("init.pt")}, "init.pt"),
            ("init-corrupt", {"--init": corrupt("init.pt")}, "init.pt"),
            *output_defects("run"),
            ("out-unwritable-resume", {"--out": under_a_file("run")}, "a_file", ERROR, ("--resume",)),
            usage("--epochs", "0"),
            usage("--on-the-fly", "0"),
        ],
        "train-baseline": [
            ("config-unknown-preset", {"--config": "huge"}, "huge"),
            ("config-epochs-zero", {"--config": tiny_yaml("training", "epochs", 0)}, "epochs"),
            ("config-weight-nan", {"--config": tiny_yaml("loss", "smoothness_weight", NAN)}, "smoothness"),
            ("sdm-one-subject", {"--method": "sdm"}, "sdm"),
            *dataset_defects("--data", few=True),
            ("data-image-nan", *dataset_defects("--data")[-3][1:]),
            ("data-ct-corrupt", *dataset_defects("--data")[13][1:]),
            *output_defects("run"),
            usage("--method", "magic"),
            usage("--epochs", "0"),
        ],
        "train-pose": [
            ("config-missing", {"--config": missing("sopi.yaml")}, "sopi.yaml"),
            ("config-unknown-preset", {"--config": "sopi_huge"}, "sopi_huge"),
            ("config-empty", {"--config": empty("sopi.yaml")}, "sopi.yaml"),
            ("config-corrupt", {"--config": text("sopi.yaml", "{[")}, "sopi.yaml"),
            ("config-alpha-negative", {"--config": sopi_yaml("loss", "alpha", -1.0)}, "alpha"),
            ("config-lam-nan", {"--config": sopi_yaml("loss", "lam", NAN)}, "lam"),
            ("config-beta-inf", {"--config": sopi_yaml("loss", "beta", INF)}, "beta"),
            ("config-steps-zero", {"--config": sopi_yaml("training", "steps", 0)}, "steps"),
            ("config-preset-path", {"--config": sopi_yaml("geometry", "grid_preset", "../../etc")}, "grid_preset"),
            ("config-unknown-field", {"--config": sopi_yaml("loss", "gamma", 1.0)}, "gamma"),
            ("source-missing", {"--config": sopi_yaml("data", "source", "{t}/nothing.nii.gz")}, "nothing.nii.gz"),
            ("resume-without-run", {}, "last.pt", ERROR, ("--resume",)),
            *output_defects("run"),
            usage("--network", "other"),
            usage("--steps", "0"),
        ],
        "register": [
            *[(f"ap-{name}", change, what) for name, change, what in image_defects("--ap")],
            *[(f"lat-{name}", change, what) for name, change, what in image_defects("--lat", f"{SUBJECT}/LAT.npy")[:4]],
            *[
                (f"mask-{name}", change, what)
                for name, change, what in image_defects("--ap-mask", f"{SUBJECT}/AP_mask.npy")
                if name in ("missing", "corrupt", "nan", "wrong-shape")
            ],
            *geometry_defects("--geometry")[:6],
            *checkpoint_defects("--model"),
            ("atlas-missing", {"--atlas": missing("atlas")}, "atlas"),
            ("truth-missing", {"--truth-labels": missing("labels.nii.gz")}, "labels.nii.gz"),
            ("air-level-nan", {"--air-level": "nan"}, "air"),
            ("air-level-negative", {"--air-level": "-5"}, "air"),
            *output_defects("folder"),
            usage("--refine", "-1"),
            usage("--side", "middle"),
            usage("--mesh-format", "dwg"),
            usage("--intensity", "bright"),
        ],
        "segment": [
            *image_defects("--image"),
            *geometry_defects("--geometry")[:3],
            ("view-unknown", {"--view": "OBLIQUE"}, "OBLIQUE"),
            ("out-suffix", {"--out": "{t}/out.jpg"}, "out.jpg"),
            ("segmentation-model-corrupt", {"--segmentation-model": corrupt("seg.pt")}, "seg.pt"),
            ("air-level-nan", {"--air-level": "nan"}, "air"),
            *output_defects("file", "out.png"),
        ],
        "preprocess": [
            *[(f"ct-{name}", change, what) for name, change, what in volume_defects("--ct", f"{SUBJECT}/ct.nii.gz")],
            *[
                (f"labels-{name}", change, what)
                for name, change, what in volume_defects("--labels", f"{SUBJECT}/labels.nii.gz")[:4]
            ],
            ("label-absent", {"--label": "99"}, "99"),
            ("preset-unknown", {"--preset": "huge"}, "preset"),
            *output_defects("folder"),
            usage("--side", "middle"),
        ],
        "demo": [
            *checkpoint_defects("--model"),
            ("model-sopi", {"--model": "{sopi}"}, "rtpi.pt"),
            *output_defects("folder"),
            usage("--seed", "-1"),
        ],
        "evaluate": [
            *checkpoint_defects("--model"),
            *dataset_defects("--data", few=True)[:6],
            ("split-unknown", {"--split": "holdout"}, "split"),
            ("data-other-preset", dataset_defects("--data")[10][1], "preset"),
            *output_defects("folder"),
            usage("--limit", "0"),
            usage("--refine", "-1"),
        ],
        "pose": [
            *[(f"ct-{name}", change, what) for name, change, what in volume_defects("--ct", f"{SUBJECT}/ct.nii.gz")],
            *[(f"ap-{name}", change, what) for name, change, what in image_defects("--ap")],
            ("lat-wrong-shape", image_defects("--lat", f"{SUBJECT}/LAT.npy")[8][1], "LAT.npy"),
            *geometry_defects("--geometry")[:6],
            ("init-missing", {"--init-pose": missing("pose.json")}, "pose.json"),
            ("init-corrupt", {"--init-pose": corrupt("pose.json")}, "pose.json"),
            ("init-not-rigid", {"--init-pose": json_file("pose.json", {"matrix": [[2, 0, 0, 0]] * 4})}, "matrix"),
            ("init-nan", {"--init-pose": json_file("pose.json", {"matrix": [[NAN] * 4] * 4})}, "matrix"),
            ("levels-text", {"--levels": "a,b"}, "--levels"),
            ("levels-negative", {"--levels": "-1"}, "--levels"),
            ("levels-nan", {"--levels": "nan"}, "--levels"),
            ("mu-water-nan", {"--mu-water": "nan"}, "mu_water"),
            ("rtpi-only", {"--rtpi": "{v}/model.pt"}, "--fine"),
            ("sopi-rtpi-missing", {"--method": "sopi", "--rtpi": missing("r.pt"), "--fine": missing("f.pt")}, "r.pt"),
            *output_defects("folder"),
            usage("--method", "guess"),
            usage("--units", "kelvin"),
            usage("--evaluations", "-1"),
            usage("--sigma-deg", "0"),
        ],
        "evaluate-pose": [
            ("datasets-unknown", {"--datasets": "knee"}, "knee"),
            ("ranges-unknown", {"--ranges": "huge"}, "huge"),
            ("methods-unknown", {"--methods": "guess"}, "guess"),
            ("sopi-without-networks", {"--methods": "sopi"}, "--rtpi"),
            ("rtpi-missing", {"--rtpi": missing("rtpi.pt"), "--fine": missing("fine.pt")}, "rtpi.pt"),
            ("rtpi-only", {"--rtpi": "{sopi}"}, "--fine"),
            ("rtpi-dataset-unknown", {"--rtpi": "knee={sopi}", "--fine": "knee={sopi}"}, "knee"),
            ("rtpi-corrupt", {"--methods": "sopi", "--rtpi": corrupt("rtpi.pt"), "--fine": "{sopi}"}, "rtpi.pt"),
            ("rtpi-truncated", {"--methods": "sopi", "--rtpi": truncated("{sopi}"), "--fine": "{sopi}"}, "rtpi.pt"),
            ("rtpi-wrong-network", {"--methods": "sopi", "--rtpi": "{fine}", "--fine": "{fine}"}, "fine.pt"),
            ("out-unwritable", {"--out": under_a_file("study")}, "a_file"),
            ("out-is-a-file", {"--out": a_file}, "a_file"),
            usage("--n", "0"),
            usage("--seed", "-1"),
            usage("--max-levels", "0"),
        ],
        "experiments": [
            ("stage-unknown", {"--stage": "nonsense"}, "--stage"),
            ("stage-not-ready", {"--stage": "train_kasten"}, "--stage"),
            ("model-full-missing", {"--model-full": missing("full.pt")}, "full.pt"),
            ("model-generalized-missing", {"--model-generalized": missing("gen.pt")}, "gen.pt"),
            ("sopi-rtpi-missing", {"--sopi-rtpi": missing("rtpi.pt"), "--sopi-fine": "{sopi}"}, "rtpi.pt"),
            ("sopi-rtpi-only", {"--sopi-rtpi": "{sopi}"}, "--sopi-fine"),
            ("out-not-experiments", {"--out": full_folder}, "full"),
            ("out-unwritable", {"--out": under_a_file("x")}, "a_file"),
            usage("--budget", "huge"),
            usage("--workers", "0"),
        ],
    }
    return [Case(command, *row) for command, cases in rows.items() for row in cases]


CASES = table()
XFAIL: dict[str, str] = {}


def _value(value: Value, valid: Path, tmp: Path) -> str:
    return str(value(valid, tmp)) if callable(value) else expand(value, valid, tmp)


def command_line(case: Case, valid: Path, tmp: Path) -> list[str]:
    """The case's arguments: the valid options with its changes, then its flags."""
    options: dict[str, Value] = {**VALID[case.command], **case.changes}
    words = [case.command]
    for option, value in options.items():
        if value is not None:
            words += [option, _value(value, valid, tmp)]
    return words + [_value(flag, valid, tmp) for flag in case.flags]


def debris(tmp: Path) -> list[Path]:
    """Temporary files or folders of an atomic write left in ``tmp``."""
    return [path for path in tmp.rglob("*") if ".partial" in path.name or ".part" in path.name]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=XFAIL[case.id])) if case.id in XFAIL else case
        for case in CASES
    ],
    ids=[case.id for case in CASES],
)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(case, valid, tmp_path):
    arguments = command_line(case, valid, tmp_path)
    out = {**VALID[case.command], **case.changes}["--out"]
    inputs = sorted((tmp_path / "inputs").rglob("*"))  # the defective inputs, made by command_line
    result = CliRunner().invoke(app, arguments)
    output = result.output
    assert "Traceback" not in output and result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]}"
    if case.kind == USAGE:
        assert case.names in output, output
    else:
        last = output.strip().splitlines()[-1]
        assert last.startswith("biplanar: error: ") and len(last) < 600, output
        assert case.names in last, f"{case.names!r} not in: {last}"
    if isinstance(out, str):
        assert not Path(expand(out, valid, tmp_path)).exists(), "the output was written"
    assert sorted((tmp_path / "inputs").rglob("*")) == inputs, "the command wrote beside its inputs"
    assert debris(tmp_path) == []


def test_the_battery_covers_every_command_and_enough_cases():
    assert {case.command for case in CASES} == set(VALID) and len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)


# --- an existing output: refused, then replaced with --overwrite ----------------------------------
EXISTING = {  # command -> (the option whose output exists, its valid value, extra valid options)
    "drr": ("--preview", "{t}/inputs/preview.png", {"--out": "{t}/inputs/out.npy"}),
    "geometry": ("--out", "{t}/inputs/out.json", {}),
    "segment": ("--out", "{t}/inputs/out.png", {}),
    "atlas": ("--out", "{t}/inputs/full", {}),
}


@pytest.mark.parametrize("command", sorted(EXISTING))
def test_an_existing_output_is_replaced_only_with_overwrite(command, valid, tmp_path):
    option, value, extra = EXISTING[command]
    target = Path(expand(value, valid, tmp_path))
    outputs = [target] + [Path(expand(path, valid, tmp_path)) for path in extra.values()]
    for path in outputs:  # earlier results: a file, or for atlas a folder holding one
        (path / "keep.txt" if command == "atlas" else path).parent.mkdir(parents=True, exist_ok=True)
        (path / "keep.txt" if command == "atlas" else path).write_bytes(b"an earlier result")
    options = {**VALID[command], option: value, **extra}
    words = [command] + [expand(part, valid, tmp_path) for pair in options.items() for part in pair]

    refused = CliRunner().invoke(app, words)
    last = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 2 and any(str(path) in last for path in outputs) and "--overwrite" in last, last
    for path in outputs:
        assert (path / "keep.txt" if command == "atlas" else path).read_bytes() == b"an earlier result"

    replaced = CliRunner().invoke(app, [*words, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    for path in outputs:
        if command == "atlas":
            assert (path / "atlas.nii.gz").is_file() and (path / "keep.txt").read_bytes() == b"an earlier result"
        else:
            assert path.stat().st_size > 0 and path.read_bytes() != b"an earlier result"
    assert debris(tmp_path) == []


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
