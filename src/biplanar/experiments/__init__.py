"""Reproducing the paper's experiments (Van Houtte et al. 2022): Table 1 (comparison methods), Table 2
(ablations with paired t-tests), Fig. 3 (a wrong LAO/RAO angle) and Fig. 4 (generalized geometries).

``biplanar experiments --out DIR --budget tiny|lite|paper`` runs :func:`run_experiments`:

- :mod:`~biplanar.experiments.budgets`: what each budget simulates, trains and searches;
- :mod:`~biplanar.experiments.models`: the full model, its ablations, the baselines, training them;
- :mod:`~biplanar.experiments.scoring`: scoring any method by its predicted labels;
- :mod:`~biplanar.experiments.angle_studies`: the Fig. 3 and Fig. 4 studies;
- :mod:`biplanar.evaluation.pose_accuracy`: SOPI's Table 1 (rigid pose accuracy), stage ``pose_accuracy``;
- :mod:`~biplanar.experiments.tables`: means, paired t-tests, Markdown tables;
- :mod:`~biplanar.experiments.report`: ``results.md``, CSVs, plots;
- :mod:`~biplanar.experiments.runner`: the resumable stages.
"""

from biplanar.experiments.budgets import BUDGETS, Budget, get_budget
from biplanar.experiments.runner import ExperimentsResult, run_experiments

__all__ = ["BUDGETS", "Budget", "ExperimentsResult", "get_budget", "run_experiments"]
