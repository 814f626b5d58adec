"""File formats: MRC, TIFF, OME-Zarr, STAR, result bundles."""
