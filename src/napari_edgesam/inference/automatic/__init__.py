"""Automatic (segment-everything) modes: point grid, prior boxes, tiles and stacks."""
