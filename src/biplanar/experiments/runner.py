"""``biplanar experiments``: every stage of the paper's reproduction, resumable, then the report.

Stages, each in its own folder ``out_dir/<stage>/`` that ends with a ``stage.json`` (its inputs,
what it produced, its wall time) once complete:

- ``data``: the orthogonal and the generalized datasets (``data/orthogonal``, ``data/generalized``;
  :func:`biplanar.data.simulate.simulate_dataset`, seeds of :mod:`~biplanar.experiments.budgets`);
- ``train_<model>``: each model of :data:`~biplanar.experiments.models.MODELS` under the budget (the
  run folder itself: ``last.pt``, ``best.pt``, ``metrics.csv``...), unless ``--model-full`` /
  ``--model-generalized`` gives a checkpoint to reuse instead;
- ``eval_<model>``: Table 1 and 2 scores of each model on the orthogonal test split (``cases.csv``;
  networks by :func:`biplanar.evaluation.evaluate.evaluate`, the baselines by their labels,
  :mod:`~biplanar.experiments.scoring`), and ``eval_optimisation``: the no-learning method;
- ``fig3_angle_error`` and ``fig4_geometry_grid``: the geometry studies
  (:mod:`~biplanar.experiments.angle_studies`), ``cases.csv`` each;
- ``pose_accuracy``: the rigid-pose study in the manner of SOPI's Table 1
  (:mod:`biplanar.evaluation.pose_accuracy`; ``cases.csv``, ``summary.md``) with the optimisation
  baselines, and ``pose_sopi`` the same cases with SOPI and SOPI+opt on the datasets that
  ``sopi_rtpi`` and ``sopi_fine`` give networks for; they need no other stage;

then the report (:mod:`~biplanar.experiments.report`, always rewritten): ``results.md``,
``table1.csv``, ``table2.csv``, ``fig3_angle_error.csv``, ``fig4_geometry_grid.csv``,
``pose_accuracy.csv`` and ``img/results_*.png``.

Resume: running the same command again skips every complete stage whose inputs (the budget, the
checkpoints it scores) are unchanged; an interrupted training continues from its ``last.pt``; any
other interrupted stage starts over. ``out_dir/experiment.json`` pins the budget: another budget in
the same folder is refused.

One stage at a time (``stage=``, the CLI's ``--stage``): runs just that stage, once the stages it
needs are complete (the data for a training; the data and the scored model for an evaluation or
study), and writes no report. Independent stages (the trainings, above all) can so run in parallel,
one process per core or GPU; a last run of the whole command then reuses them and writes the report.
Two processes must not run the same stage.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biplanar.config import load_config
from biplanar.data.datasets import SimulatedDataset
from biplanar.data.simulate import SimulationConfig, simulate_dataset, split_sizes
from biplanar.devices import default_device
from biplanar.errors import InputError
from biplanar.evaluation.evaluate import evaluate, rows_to_csv
from biplanar.evaluation.pose_accuracy import (
    BASELINE_METHODS,
    SopiNetworks,
    StudySettings,
    run_study,
    sopi_checkpoints,
    write_outputs,
)
from biplanar.experiments.angle_studies import angle_error_rows, geometry_grid_rows
from biplanar.experiments.budgets import (
    EXPERIMENT_SCENE,
    EXPERIMENT_SHAPES,
    GENERALIZED_SEED,
    ORTHOGONAL_SEED,
    POSE_SEED,
    Budget,
    get_budget,
)
from biplanar.experiments.models import (
    ABLATIONS,
    BASELINES,
    FULL,
    GENERALIZED,
    GENERALIZED_MODEL,
    MODELS,
    NETWORK,
    ORTHOGONAL,
    ModelSpec,
    TrainedModel,
    reused_model,
    train_model,
)
from biplanar.experiments.report import ReportInputs, write_report
from biplanar.experiments.scoring import BaselinePredictor, NetworkPredictor, OptimisationPredictor, score_split
from biplanar.experiments.stages import (
    CASES_FILE,
    DATA_STAGE,
    EXPERIMENT_FILE,
    FIG3_STAGE,
    FIG4_STAGE,
    OPTIMISATION_STAGE,
    POSE_SOPI_STAGE,
    POSE_STAGE,
    STAGE_FILE,
    TEST_SPLIT,
    StageRecord,
)
from biplanar.io.atomic import atomic_write_text, require_output_folder
from biplanar.io.json_files import read_json, write_json
from biplanar.pose.estimate import SOPI_METHODS
from biplanar.progress import print_stage, progress_bar, ticker


@dataclass
class ExperimentsResult:
    """What :func:`run_experiments` did.

    Attributes:
        out_dir: the experiments folder.
        results_md: ``out_dir/results.md``.
        stages: every stage in order, run now or reused.
        files: the report's files (``results.md``, CSVs, PNGs).
    """

    out_dir: Path
    results_md: Path
    stages: list[StageRecord] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.ran]

    @property
    def skipped(self) -> list[str]:
        return [stage.name for stage in self.stages if not stage.ran]


def experiment_command(
    out_dir: Path,
    budget: str,
    model_full: Path | None,
    model_generalized: Path | None,
    docs_dir: Path | None,
    sopi: SopiNetworks | None = None,
) -> str:
    """The ``biplanar experiments`` command line equivalent to these arguments (quoted for a shell)."""
    words = ["biplanar", "experiments", "--out", str(out_dir), "--budget", budget]
    for option, value in (("--model-full", model_full), ("--model-generalized", model_generalized)):
        if value is not None:
            words += [option, str(value)]
    for dataset, checkpoints in (sopi or {}).items():
        words += ["--sopi-rtpi", f"{dataset}={checkpoints.rtpi}", "--sopi-fine", f"{dataset}={checkpoints.fine}"]
    if docs_dir is not None:
        words += ["--docs"] + ([] if Path(docs_dir) == Path("docs") else ["--docs-dir", str(docs_dir)])
    return shlex.join(words)


class _Stages:
    """Runs stages with resume (module doc) and keeps their records."""

    def __init__(self, out_dir: Path, budget: Budget, progress: bool, only: str | None = None) -> None:
        """``only``: run no stage but this one; any other must be complete already. The first stage
        that runs pins ``budget`` to ``out_dir`` (nothing is written before)."""
        self.out_dir, self.budget, self.progress, self.only = out_dir, budget, progress, only
        self.records: list[StageRecord] = []

    def run(
        self, name: str, inputs: dict[str, Any], work: Callable[[Path], dict[str, Any]], resumable: bool = False
    ) -> dict[str, Any]:
        """The ``info`` of stage ``name``: from its ``stage.json`` when complete with the same ``inputs``,
        else from ``work(folder)`` (a non-``resumable`` stage's folder is emptied first)."""
        folder = self.out_dir / name
        marker = folder / STAGE_FILE
        if marker.is_file():
            document = read_json(marker)
            if document.get("inputs") == inputs:
                self.records.append(StageRecord(name, document["info"], document["seconds"], ran=False))
                print_stage("experiments", self.progress, f"{name}: complete, skipped")
                return document["info"]
            if resumable:
                raise InputError(
                    f"{marker}: made with other inputs ({document.get('inputs')}); delete {folder} to redo it"
                )
        if self.only is not None and name != self.only:
            raise InputError(
                f"--stage {self.only}: needs stage {name}, which is not complete; run it first "
                f"(--stage {name}, or the whole command)"
            )
        if not resumable and folder.exists():
            shutil.rmtree(folder)
        _pin_budget(self.out_dir, self.budget)
        folder.mkdir(parents=True, exist_ok=True)
        print_stage("experiments", self.progress, f"{name}: running")
        started = time.perf_counter()
        info = work(folder)
        seconds = time.perf_counter() - started
        write_json(
            marker,
            {
                "stage": name,
                "inputs": inputs,
                "info": info,
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
        self.records.append(StageRecord(name, info, seconds, ran=True))
        return info


def _check_budget(out_dir: Path, budget: Budget) -> None:
    """Refuse a folder made with another budget (or not by this command)."""
    path = out_dir / EXPERIMENT_FILE
    if not path.is_file() and out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(
            f"{out_dir}: not empty and not an experiments folder (no {EXPERIMENT_FILE}); choose a new or empty --out"
        )
    if path.is_file() and read_json(path).get("budget") != budget.name:
        raise InputError(
            f"{path}: this folder holds a {read_json(path).get('budget')!r} run, not {budget.name!r}; "
            f"choose another --out"
        )


def _pin_budget(out_dir: Path, budget: Budget) -> None:
    """Write ``experiment.json`` (the folder's budget) unless it is there already."""
    path = out_dir / EXPERIMENT_FILE
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"budget": budget.name})


def _checkpoint_inputs(out_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """What identifies a checkpoint for resume: its path (relative to ``out_dir`` when inside it) and
    modification time."""
    path = Path(checkpoint).resolve()
    try:
        name = str(path.relative_to(out_dir.resolve()))
    except ValueError:
        name = str(path)
    return {"checkpoint": name, "modified_ns": path.stat().st_mtime_ns}


@dataclass
class _Context:
    out_dir: Path
    budget: Budget
    stages: _Stages
    device: Any
    workers: int
    progress: bool
    models: dict[str, TrainedModel] = field(default_factory=dict)  # by model name, once trained or reused
    sopi: SopiNetworks = field(default_factory=dict)  # dataset -> SOPI's checkpoints for the pose study

    def data_dir(self, geometry: str) -> Path:
        return self.out_dir / DATA_STAGE / geometry

    def test_set(self, masked: bool):

        return SimulatedDataset(self.data_dir(ORTHOGONAL), TEST_SPLIT, masked=masked)


def _make_data(context: _Context) -> dict[str, Any]:

    budget = context.budget
    preset = load_config(budget.config).geometry.grid_preset

    def work(folder: Path) -> dict[str, Any]:
        for geometry, seed in ((ORTHOGONAL, ORTHOGONAL_SEED), (GENERALIZED, GENERALIZED_SEED)):
            simulate_dataset(
                folder / geometry,
                budget.subjects,
                seed,
                SimulationConfig(preset=preset, geometry=geometry, shapes=EXPERIMENT_SHAPES, scene=EXPERIMENT_SCENE),
                workers=context.workers,
                progress=context.progress,
            )
        return {
            "preset": preset,
            "subjects": budget.subjects,
            "split": split_sizes(budget.subjects),
            "seeds": {ORTHOGONAL: ORTHOGONAL_SEED, GENERALIZED: GENERALIZED_SEED},
        }

    inputs = {
        "budget": budget.name,
        "subjects": budget.subjects,
        "seeds": [ORTHOGONAL_SEED, GENERALIZED_SEED],
        "shapes": EXPERIMENT_SHAPES,
        "scene": EXPERIMENT_SCENE,
    }
    return context.stages.run(DATA_STAGE, inputs, work, resumable=True)


def _train(context: _Context, spec: ModelSpec) -> TrainedModel:
    def work(folder: Path) -> dict[str, Any]:
        return train_model(spec, context.budget, context.data_dir(spec.geometry), folder, context.progress).to_dict()

    name = f"train_{spec.name}"
    inputs = {"budget": context.budget.name, "model": spec.name, "switches": [list(s) for s in spec.switches]}
    model = TrainedModel.from_dict(context.stages.run(name, inputs, work, resumable=True))
    # The folder as given now (the recorded path depends on the working directory of the run that trained it).
    return dataclasses.replace(model, checkpoint=context.out_dir / name / model.checkpoint.name)


def _write_rows(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    atomic_write_text(folder / CASES_FILE, rows_to_csv(rows))
    return {"cases": len({row["case"] for row in rows}), "rows": len(rows), "csv": CASES_FILE}


def _evaluate(context: _Context, spec: ModelSpec, model: TrainedModel) -> dict[str, Any]:

    def work(folder: Path) -> dict[str, Any]:
        if spec.method == NETWORK:
            result = evaluate(
                model.checkpoint,
                context.data_dir(ORTHOGONAL),
                folder,
                TEST_SPLIT,
                device=context.device,
                progress=context.progress,
            )
            return {"cases": len({row["case"] for row in result.rows}), "rows": len(result.rows), "csv": CASES_FILE}
        dataset = context.test_set(masked=True)
        with progress_bar(context.progress, elapsed=True, remaining=False) as bar:
            tick = ticker(bar, f"score {spec.name}", len(dataset))
            return _write_rows(folder, score_split(BaselinePredictor(model.checkpoint, context.device), dataset, tick))

    return context.stages.run(f"eval_{spec.name}", _checkpoint_inputs(context.out_dir, model.checkpoint), work)


def _evaluate_optimisation(context: _Context) -> dict[str, Any]:

    budget = context.budget

    def work(folder: Path) -> dict[str, Any]:
        dataset = context.test_set(masked=True)
        predictor = OptimisationPredictor(
            load_config(budget.config),
            budget.optimisation_affine_iterations,
            budget.optimisation_iterations,
            budget.optimisation_integration_factor,
            context.device,
        )
        with progress_bar(context.progress, elapsed=True, remaining=False) as bar:
            tick = ticker(bar, "optimisation baseline", len(dataset))
            return {**_write_rows(folder, score_split(predictor, dataset, tick)), **steps}

    steps = {
        "affine_iterations": budget.optimisation_affine_iterations,
        "iterations": budget.optimisation_iterations,
        "integration_factor": budget.optimisation_integration_factor,
    }
    return context.stages.run(OPTIMISATION_STAGE, {"budget": budget.name, **steps}, work)


def _geometry_study(
    context: _Context,
    model: TrainedModel,
    stage: str,
    description: str,
    angles: tuple[str, tuple[float, ...]],
    rows_of: Callable[..., list[dict[str, Any]]],
) -> dict[str, Any]:
    """A geometry study of ``model`` on the unmasked orthogonal test split (Fig. 3 or Fig. 4).

    Args:
        stage: the stage's name (its folder).
        description: the progress bar's label.
        angles: ``(input name, values in degrees)``: the studied angles, one progress step per case
            and value, recorded among the stage's inputs under that name.
        rows_of: ``rows_of(predictor, dataset, tick=tick)`` -> the rows of ``cases.csv``.
    """

    name, values = angles

    def work(folder: Path) -> dict[str, Any]:
        dataset = context.test_set(masked=False)
        with progress_bar(context.progress, elapsed=True, remaining=False) as bar:
            tick = ticker(bar, description, len(dataset) * len(values))
            rows = rows_of(NetworkPredictor(model.checkpoint, context.device), dataset, tick=tick)
        return _write_rows(folder, rows)

    inputs = {
        **_checkpoint_inputs(context.out_dir, model.checkpoint),
        "budget": context.budget.name,
        name: list(values),
    }
    return context.stages.run(stage, inputs, work)


def _angle_error(context: _Context, model: TrainedModel) -> dict[str, Any]:

    budget = context.budget
    rows_of = functools.partial(
        angle_error_rows, angle_errors_deg=budget.angle_errors_deg, correction_config=budget.pose_correction
    )
    return _geometry_study(
        context, model, FIG3_STAGE, "Fig. 3 angle errors", ("angles", budget.angle_errors_deg), rows_of
    )


def _geometry_grid(context: _Context, model: TrainedModel) -> dict[str, Any]:

    budget = context.budget
    rows_of = functools.partial(geometry_grid_rows, offsets_deg=budget.grid_offsets_deg)
    return _geometry_study(
        context, model, FIG4_STAGE, "Fig. 4 geometry grid", ("offsets", budget.grid_offsets_deg), rows_of
    )


def _pose_settings(context: _Context, sopi: bool) -> StudySettings:
    """The pose study's settings under the budget: the baselines, or (``sopi``) SOPI's methods on the
    datasets that have networks."""
    budget = context.budget
    if not sopi:
        return StudySettings(
            budget.pose_datasets, budget.pose_ranges, budget.pose_cases, POSE_SEED, BASELINE_METHODS, budget.pose_search
        )
    datasets = tuple(name for name in budget.pose_datasets if name in context.sopi)
    return StudySettings(datasets, budget.pose_ranges, budget.pose_cases, POSE_SEED, SOPI_METHODS, budget.pose_search)


def _pose_study(context: _Context, sopi: bool) -> dict[str, Any]:
    """The ``pose_accuracy`` stage (the baselines), or with ``sopi`` the ``pose_sopi`` stage."""

    settings = _pose_settings(context, sopi)
    networks = {name: context.sopi[name] for name in settings.datasets} if sopi else {}

    def work(folder: Path) -> dict[str, Any]:
        with progress_bar(context.progress, elapsed=True, remaining=False) as bar:
            tick = ticker(bar, "rigid pose (SOPI Table 1)", settings.runs(networks))
            rows = run_study(settings, networks, tick=tick)
        write_outputs(folder, rows, settings)
        return {
            "cases": settings.cases,
            "rows": len(rows),
            "csv": CASES_FILE,
            "datasets": list(settings.datasets),
            "ranges": list(settings.ranges),
            "methods": list(settings.methods),
            "search": dataclasses.asdict(settings.effort),
        }

    inputs = {
        "budget": context.budget.name,
        "cases": settings.cases,
        "datasets": list(settings.datasets),
        "ranges": list(settings.ranges),
        "seed": settings.seed,
        "methods": list(settings.methods),
        "search": dataclasses.asdict(settings.effort),
    }
    if sopi:
        inputs["networks"] = {
            name: {part: _checkpoint_inputs(context.out_dir, getattr(checkpoints, part)) for part in ("rtpi", "fine")}
            for name, checkpoints in networks.items()
        }
    return context.stages.run(POSE_SOPI_STAGE if sopi else POSE_STAGE, inputs, work)


_Reused = dict[str, tuple[Path | None, str]]


def _model(context: _Context, spec: ModelSpec, reused: _Reused) -> TrainedModel:
    """The model ``spec``: the user's checkpoint when ``reused`` names one for it, else trained under the budget."""
    if spec.name not in context.models:
        path, option = reused.get(spec.name, (None, ""))
        context.models[spec.name] = (
            _train(context, spec) if path is None else reused_model(path, context.budget, option)
        )
    return context.models[spec.name]


def _evaluate_model(context: _Context, spec: ModelSpec, reused: _Reused) -> dict[str, Any]:
    return _evaluate(context, spec, _model(context, spec, reused))


def _stage_work(context: _Context, reused: _Reused) -> dict[str, Callable[[], Any]]:
    """Every stage's name -> a call that runs it (with what it needs), in the order of a whole run."""
    work: dict[str, Callable[[], Any]] = {DATA_STAGE: functools.partial(_make_data, context)}
    trained = [spec for spec in MODELS if spec.name not in reused or reused[spec.name][0] is None]
    work.update({f"train_{spec.name}": functools.partial(_model, context, spec, reused) for spec in trained})
    work.update(
        {
            f"eval_{spec.name}": functools.partial(_evaluate_model, context, spec, reused)
            for spec in (FULL, *ABLATIONS, *BASELINES)
        }
    )
    work[OPTIMISATION_STAGE] = functools.partial(_evaluate_optimisation, context)
    work[FIG3_STAGE] = lambda: _angle_error(context, _model(context, FULL, reused))
    work[FIG4_STAGE] = lambda: _geometry_grid(context, _model(context, GENERALIZED_MODEL, reused))
    work[POSE_STAGE] = functools.partial(_pose_study, context, False)
    if set(context.sopi) & set(context.budget.pose_datasets):
        work[POSE_SOPI_STAGE] = functools.partial(_pose_study, context, True)
    return work


def run_experiments(
    out: str | Path,
    budget: str,
    model_full: str | Path | None = None,
    model_generalized: str | Path | None = None,
    docs_dir: str | Path | None = None,
    workers: int = 1,
    stage: str | None = None,
    sopi_rtpi: Sequence[str | Path] | str | Path | None = None,
    sopi_fine: Sequence[str | Path] | str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> ExperimentsResult:
    """Reproduce the paper's Tables 1-2, Figs. 3-4 and SOPI's Table 1 (``biplanar experiments``).

    Runs (or resumes: re-running reuses the stages complete in ``out``) every stage and writes
    ``out/results.md`` with its CSVs and plots (module doc). Ctrl-C during a training stage
    checkpoints it and raises :class:`~biplanar.training.trainer.TrainingInterrupted`; calling
    again resumes.

    Args:
        out: the experiments folder (created).
        budget: ``tiny`` (a plumbing check), ``lite`` (CPU-sized) or ``paper``
            (:data:`~biplanar.experiments.budgets.BUDGETS`).
        model_full: reuse this full-model checkpoint instead of training one (its preset must be the
            budget's); used for Tables 1-2 and Fig. 3.
        model_generalized: reuse this checkpoint as the Fig. 4 model (trained on generalized
            geometries).
        docs_dir: also copy ``results.md`` to ``docs_dir/results.md`` and the plots to
            ``docs_dir/img/results_*.png``.
        workers: parallel processes simulating the datasets.
        stage: run only this stage (e.g. ``train_kasten``; module doc), once the stages it needs are
            complete, and write no report (``results_md`` may then not exist).
        sopi_rtpi: SOPI RTPI checkpoints (``biplanar train-pose``), ``DATASET=PATH`` (``femur``,
            ``lumbar``) or ``PATH`` for all (:func:`~biplanar.evaluation.pose_accuracy.sopi_checkpoints`):
            the stage ``pose_sopi`` then also scores ``sopi`` and ``sopi+opt`` on those datasets.
        sopi_fine: SOPI fine-registration checkpoints, as ``sopi_rtpi``.
        progress: show progress on stderr.
        device: ``cpu`` or ``cuda`` (default: CUDA when available).

    Returns:
        the report's path, the stages run now and those reused.

    Raises:
        InputError: an unknown budget or stage, a stage whose prerequisites are not complete, a bad
            or mismatching checkpoint, or ``out`` holding another budget's run.
        TrainingInterrupted: Ctrl-C / SIGTERM during training, after writing its checkpoint.
    """

    require_output_folder(out)
    selected = get_budget(budget)
    if workers < 1:
        raise InputError(f"--workers: expected >= 1, got {workers}")
    out_dir = Path(out)
    reused = {
        FULL.name: (None if model_full is None else Path(model_full), "--model-full"),
        GENERALIZED_MODEL.name: (None if model_generalized is None else Path(model_generalized), "--model-generalized"),
    }
    for path, option in reused.values():
        if path is not None and not path.is_file():
            raise InputError(f"{option} {path}: file not found")
    sopi = sopi_checkpoints(sopi_rtpi, sopi_fine, ("--sopi-rtpi", "--sopi-fine"))
    _check_budget(out_dir, selected)
    command = experiment_command(
        out_dir,
        budget,
        None if model_full is None else Path(model_full),
        None if model_generalized is None else Path(model_generalized),
        None if docs_dir is None else Path(docs_dir),
        sopi,
    )
    stages = _Stages(out_dir, selected, progress, only=stage)
    context = _Context(
        out_dir, selected, stages, torch.device(device) if device else default_device(), workers, progress, sopi=sopi
    )
    work = _stage_work(context, reused)
    if stage is not None:
        if stage not in work:
            raise InputError(f"--stage: expected one of {', '.join(work)}, got {stage!r}")
        if stage not in (DATA_STAGE, POSE_STAGE, POSE_SOPI_STAGE):  # the pose studies need no simulated data
            work[DATA_STAGE]()
        work[stage]()
        return ExperimentsResult(out_dir, out_dir / "results.md", stages.records)
    data = work[DATA_STAGE]()
    for name in work:
        if name != DATA_STAGE:
            work[name]()
    models = {spec.name: _model(context, spec, reused) for spec in MODELS}
    print_stage("experiments", progress, "writing the report")
    inputs = ReportInputs(
        out_dir=out_dir,
        budget=selected,
        command=command,
        data=data,
        models=models,
        stages=stages.records,
        device=str(context.device),
    )
    files = write_report(inputs, None if docs_dir is None else Path(docs_dir))
    return ExperimentsResult(out_dir, out_dir / "results.md", stages.records, files)
