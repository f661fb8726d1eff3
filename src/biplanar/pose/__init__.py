"""Rigid CT-to-X-ray pose estimation: similarities, optimisation baselines, the ``pose`` command's API.

- :mod:`~biplanar.pose.similarity`: NCC, NGI and GC of 2D images.
- :mod:`~biplanar.pose.baselines`: Opt-NCC / Opt-NGI / Opt-GC (CMA-ES + L-BFGS on ProST DRRs).
- :mod:`~biplanar.pose.estimate`: file-level estimation, corrected geometry, calibration correction.
- :mod:`~biplanar.pose.sopi`: the learned SOPI estimator (when present).

Rigid parameters <-> matrices live in :mod:`biplanar.geometry.transforms`, the SE(3) helpers
(geodesics, pose errors) in :mod:`biplanar.geometry.se3`. Submodules are imported where used.
"""
