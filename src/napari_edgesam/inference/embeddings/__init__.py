"""Embeddings kept for reuse: the cache, lazy per-slice and per-tile embedding."""
