"""biplanar: patient-specific 3D bone models from two calibrated radiographs."""

__version__ = "0.1.0"
