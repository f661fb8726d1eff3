"""File formats: volumes (NIfTI), radiographs (.npy, .tif, .png, .dcm), atomic writes."""
