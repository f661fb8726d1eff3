"""Data: the synthetic femur phantom population and its grids.

The names of ``__init__.pyi`` are loaded on first use (``lazy_loader``, the Scientific Python
SPEC 1): importing a submodule (``biplanar.data.atlas``, which ``register`` needs) does not import
the phantom generator (``biplanar.data.phantom``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
