"""PyTorch modules of EdgeSAM (and the SAM teacher). Importing this package imports torch."""

from .build import CheckpointError, build_edge_sam
from .edge_sam import EdgeSam, stability_score

__all__ = ["CheckpointError", "EdgeSam", "build_edge_sam", "stability_score"]
