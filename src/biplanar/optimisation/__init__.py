"""Optimisation-based registration: test-time refinement of the network's output, and the
no-learning intensity-based baseline (the same optimiser started from the identity)."""

from biplanar.optimisation.intensity_registration import (
    ProjectionObjective,
    RefinementResult,
    RefineSettings,
    refine_registration,
)

__all__ = ["ProjectionObjective", "RefineSettings", "RefinementResult", "refine_registration"]
