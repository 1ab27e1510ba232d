"""The batch engine: folders of images (or a Dask cluster) -> label files and records."""
