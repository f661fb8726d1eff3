"""``demo``: the main job end to end on a held-out synthetic patient (``docs/contract.md`` section 5).

1. Simulate one femur patient with a fixed case seed (:data:`DEMO_SEED`) on the model's grid
   preset, seen by the paper's orthogonal AP + LAT views. Training datasets use
   ``biplanar simulate --seed 2026``, whose subjects have the case seeds
   ``simulate.subject_seed(2026, i)`` (63-bit hashes), so this seed is never a training subject.
2. Write its inputs into ``out_dir/inputs`` (the layout of one dataset subject:
   :data:`biplanar.data.simulate.SUBJECT_FILES`: CT, true labels, radiographs, masks, masked
   radiographs, ``geometry.json``, ``subject.json`` with the true landmarks).
3. Register the atlas with :func:`biplanar.registration.register` (the bundled model by default)
   from the radiographs and masks, with the true labels for scoring, into ``out_dir/registration``
   (whose ``report.html`` shows it all on one page: :attr:`DemoResult.report_page`).
   With ``clinical``, also render the patient as a clinic hands it over (:mod:`biplanar.data.clinical`:
   two DICOM files of transmission counts on a 448 x 320 detector at 0.6 mm, the geometry in their
   tags, no masks) into ``out_dir/inputs/clinical`` and register them alone into
   ``out_dir/registration_clinical``: the scores of both routes stand side by side.
4. Draw the Fig. 2-style figure ``out_dir/figure.png`` (:mod:`biplanar.evaluation.figures`) and
   write ``out_dir/demo.json`` (the numbers of the summary table).

The network's time is split at the affine module's output
(:func:`biplanar.evaluation.evaluate.network_stage_times`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from biplanar.config import ExperimentConfig
from biplanar.data.clinical import write_clinical_dicoms
from biplanar.data.simulate import SimulationConfig, simulate_case, write_case
from biplanar.errors import InputError
from biplanar.evaluation.evaluate import StageTimes, network_stage_times
from biplanar.evaluation.figures import load_figure_data, write_registration_figure
from biplanar.evaluation.hip import MEASUREMENT_KEYS, hip_errors, subject_hip_truth
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.io.atomic import atomic_folder, require_empty_out_dir
from biplanar.io.json_files import read_json, write_json
from biplanar.progress import print_stage
from biplanar.registration import register
from biplanar.registration.outputs import SCORES
from biplanar.training.checkpoints import bundled_model_path, load_checkpoint

DEMO_SEED = 20261121  # the held-out patient's case seed (module doc)
DEFAULT_OUT_DIR = Path("biplanar_demo")
INPUTS, REGISTRATION, FIGURE, SUMMARY = "inputs", "registration", "figure.png", "demo.json"
CLINICAL, REGISTRATION_CLINICAL = "clinical", "registration_clinical"
METRICS = SCORES  # report.json's scores against the truth: key, label, unit


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out_dir: the demo folder (``inputs/``, ``registration/``, ``figure.png``, ``demo.json``).
        report: the registration's ``report.json``.
        network: the network's forward time, split at the affine module.
        hip: measurement -> ``{"measured", "true", "error"}``, or ``None`` when the report has no
            hip measurements.
        total_s: the whole demo's wall time, s.
        clinical_report: with ``clinical``, the ``report.json`` of the DICOM-only route, else ``None``.
    """

    out_dir: Path
    report: dict[str, Any]
    network: StageTimes
    hip: dict[str, dict[str, Any]] | None
    total_s: float
    clinical_report: dict[str, Any] | None = None

    @property
    def report_page(self) -> Path:
        """The registration's ``report.html``, to open in a browser."""
        return self.out_dir / REGISTRATION / "report.html"

    def document(self) -> dict[str, Any]:
        """``demo.json``: the scores, the timings (s) and the hip measurements."""
        return {
            "metrics": {key: self.report.get(key) for key, _, _ in METRICS},
            "timings_s": {
                "affine_module": self.network.affine_s,
                "local_module": self.network.local_s,
                "network": self.network.total_s,
                "register": self.report["timings_s"]["total"],
                "demo": self.total_s,
            },
            "hip": self.hip,
            "model": self.report["inputs"]["model"],
            **(
                {}
                if self.clinical_report is None
                else {
                    "clinical": {
                        "metrics": {key: self.clinical_report.get(key) for key, _, _ in METRICS},
                        "inputs": "two DICOM files: transmission counts (LIN, MONOCHROME1), 448 x 320 at 0.6 mm, "
                        "geometry from the tags, no masks",
                        "register_s": self.clinical_report["timings_s"]["total"],
                    }
                }
            ),
        }


def model_config(model_path: Path):
    """The :class:`~biplanar.config.ExperimentConfig` stored in a checkpoint."""

    return ExperimentConfig.from_dict(load_checkpoint(model_path)["config"], f"{model_path}: config")


def demo_case(seed: int, config):
    """The held-out case ``seed`` on the grid preset and detector of the model ``config``,
    orthogonal AP + LAT views (:func:`biplanar.data.simulate.simulate_case`)."""

    simulation = SimulationConfig(preset=config.geometry.grid_preset, geometry="orthogonal")
    if simulation.image_shape != tuple(config.geometry.image_shape):
        raise InputError(
            f"model config: image_shape {list(config.geometry.image_shape)} differs from the "
            f"{simulation.preset} simulation detector {list(simulation.image_shape)}"
        )
    return simulate_case(seed, simulation)


def hip_comparison(report: dict[str, Any], subject: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Measurement -> ``{"measured", "true", "error"}`` from ``report["hip"]`` (the registered
    measurements) and the subject's truth (:func:`biplanar.evaluation.hip.subject_hip_truth` of its
    ``subject.json`` document), or ``None`` without hip measurements in the report. The head
    centre's error is the distance (mm); the others are signed, registered - true."""

    measured = report.get("hip")
    if not measured:
        return None
    truth, errors = subject_hip_truth(subject), hip_errors(measured, subject)
    comparison = {}
    for key in MEASUREMENT_KEYS:
        name, unit = key.rsplit("_", 1)  # hip_errors calls the error of "<name>_<unit>" "<name>_error_<unit>"
        comparison[key] = {"measured": measured[key], "true": truth[key], "error": errors[f"{name}_error_{unit}"]}
    return comparison


def _relocated_report(folder: Path, partial: Path, out_dir: Path) -> dict[str, Any]:
    """Rewrite ``folder/report.json``'s input paths under ``partial`` (the demo's temporary folder) to
    their place under ``out_dir`` once it is renamed; returns the report."""
    path = folder / "report.json"
    report = read_json(path)
    for key, value in report["inputs"].items():
        if isinstance(value, str) and Path(value).is_relative_to(partial):
            report["inputs"][key] = str(out_dir / Path(value).relative_to(partial))
    write_json(path, report)
    return report


def run_demo(
    out_dir: str | Path = DEFAULT_OUT_DIR,
    model_path: str | Path | None = None,
    seed: int = DEMO_SEED,
    progress: bool = True,
    clinical: bool = False,
) -> DemoResult:
    """Run the demo (module doc).

    Args:
        out_dir: the demo folder; must not exist or be empty.
        model_path: a checkpoint (default: the bundled ``lite`` model); the grid preset and
            detector follow its config.
        seed: the case seed of the patient (default :data:`DEMO_SEED`, never a training subject).
        progress: print the stages on stderr.
        clinical: also register the patient from two clinic DICOM files alone (module doc).

    Raises:
        InputError: a non-empty ``out_dir``, a bad checkpoint, or no bundled model. The demo is
            built in a temporary sibling folder renamed to ``out_dir`` at the end: a failed or killed
            demo leaves no ``out_dir`` (a killed one's temporary folder goes on the next run).
    """

    started = time.perf_counter()
    out_dir = Path(out_dir)
    require_empty_out_dir(out_dir)
    if model_path is None:
        model_path = bundled_model_path("lite")
    config = model_config(Path(model_path))
    with atomic_folder(out_dir, replace=False) as partial:  # killed or failed: no demo folder appears
        demo = _run(partial, Path(model_path), config, seed, progress, started, clinical)
        report = _relocated_report(partial / REGISTRATION, partial, out_dir)
        clinical_report = _relocated_report(partial / REGISTRATION_CLINICAL, partial, out_dir) if clinical else None
    return dataclasses.replace(demo, out_dir=out_dir, report=report, clinical_report=clinical_report)


def _run(
    out_dir: Path, model_path: Path, config, seed: int, progress: bool, started: float, clinical: bool
) -> DemoResult:

    print_stage(
        "demo", progress, f"simulating the held-out patient (case seed {seed}, {config.geometry.grid_preset} preset)"
    )
    case = demo_case(seed, config)
    inputs = out_dir / INPUTS
    write_case(inputs, case, {"subject_id": "demo"})
    with network_stage_times() as network_times:
        result = register(
            inputs / "geometry.json",
            inputs / "AP.npy",
            inputs / "LAT.npy",
            out_dir / REGISTRATION,
            model_path,
            ap_mask=inputs / "AP_mask.npy",
            lat_mask=inputs / "LAT_mask.npy",
            truth_labels=inputs / "labels.nii.gz",
            progress=progress,
        )
    clinical_report = None
    if clinical:
        print_stage("demo", progress, "the clinical route: two DICOM files alone (448 x 320, transmission, no masks)")
        files = write_clinical_dicoms(inputs / CLINICAL, case.ct_hu, case.grid, spec=case.subject.spec)
        clinical_report = register(
            None,
            files["AP"],
            files["LAT"],
            out_dir / REGISTRATION_CLINICAL,
            model_path,
            truth_labels=inputs / "labels.nii.gz",
            progress=progress,
        ).report
    print_stage("demo", progress, "drawing the figure")
    figure_data = load_figure_data(
        result.out_dir,
        inputs / "geometry.json",
        {name: inputs / f"{name}.npy" for name in VIEW_NAMES},
        inputs / "labels.nii.gz",
    )
    write_registration_figure(out_dir / FIGURE, figure_data)
    hip = hip_comparison(result.report, case.record())
    demo = DemoResult(out_dir, result.report, network_times[0], hip, time.perf_counter() - started, clinical_report)
    write_json(out_dir / SUMMARY, demo.document())
    return demo


def _number(value: float | None, unit: str, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" + (f" {unit}" if unit else "")


def _value(value: float | list[float]) -> str:
    """A number to 2 decimals, or a point as ``(x, y, z)``."""
    if isinstance(value, list):
        return "(" + ", ".join(f"{v:.1f}" for v in value) + ")"
    return f"{value:.2f}"


def summary_tables(result: DemoResult):
    """Rich tables: the scores and timings, and (when measured) the hip measurements vs truth."""

    table = Table(title=f"biplanar demo: {result.out_dir}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, label, unit in METRICS:
        table.add_row(label, _number(result.report.get(key), unit))
    if result.clinical_report is not None:
        for key, label, unit in METRICS:
            table.add_row(
                f"{label}, clinical route (2 DICOM files only)", _number(result.clinical_report.get(key), unit)
            )
    times = result.document()["timings_s"]
    for key, label in (
        ("affine_module", "time, affine module"),
        ("local_module", "time, local module"),
        ("network", "time, network (affine + local)"),
        ("register", "time, register (load + network + writing)"),
        ("demo", "time, whole demo"),
    ):
        table.add_row(label, _number(times[key], "s", 2))
    tables = [table]
    if result.hip:
        hip_table = Table(title="hip measurements: registered vs true")
        for column in ("measurement", "registered", "true", "error"):
            hip_table.add_column(column, justify="left" if column == "measurement" else "right")
        for name, values in result.hip.items():
            hip_table.add_row(name, *(_value(values[key]) for key in ("measured", "true", "error")))
        tables.append(hip_table)
    return tables
