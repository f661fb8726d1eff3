"""Registration networks: the affine and local modules and the full atlas network."""
