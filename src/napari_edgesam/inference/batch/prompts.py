"""Batch prompt mode: every object's prompts checked against its image (the predictor's own
validation, with the CSV file and row in the error), then segmented on tiles and painted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.prompts import validate_prompt
from ..embeddings.tiling import TiledImage
from .config import BatchConfig
from .io import ImageData
from .prompt_csv import CsvObject


def normalisation(image: ImageData, config: BatchConfig) -> dict:
    norm = {}
    if image.has_channels:
        norm["channel_axis"] = -1
        if config.channel is not None:
            norm["channel"] = config.channel
    elif config.channel is not None:
        raise ValueError(f"channel={config.channel} was given but the image has no channel axis")
    return norm


class PromptError(ValueError):
    """A prompt that does not fit its image; the message names the CSV file, the row and why."""


def check_prompts(image: ImageData, prompts: Sequence[CsvObject]) -> None:
    """Validate every object's prompts against ``image`` before anything is segmented (the same
    checks as the predictor's, :func:`~napari_edgesam.inference.core.prompts.validate_prompt`).
    Raises :class:`PromptError` naming the first bad object's file and row."""
    shape = image.data.shape[: 3 if image.is_stack else 2]
    plane = image.plane_shape
    for obj in prompts:
        where = f"{obj.source}: object {obj.name!r}" if obj.source else f"object {obj.name!r}"
        if image.is_stack and obj.z is None:
            raise PromptError(f"{where} has no z but the image is a stack of {shape[0]} slices")
        if obj.z is not None and not (image.is_stack and 0 <= obj.z < shape[0]):
            raise PromptError(f"{where} is on slice z={obj.z}, which the image (shape {shape}) does not have")
        try:
            validate_prompt(obj.points, obj.labels, obj.box, plane)
        except ValueError as err:
            raise PromptError(f"{where}: {err}") from None


def segment_prompts(predictor, image: ImageData, prompts: Sequence[CsvObject], config: BatchConfig) -> np.ndarray:
    """Labels ``[Z] x Y x X`` (uint32) with object ``k`` (1-based, in prompt order) painted
    from its prompts; later objects are painted over earlier ones. Every prompt is checked
    first (:func:`check_prompts`): one invalid prompt makes the whole image an error."""
    check_prompts(image, prompts)
    norm = normalisation(image, config)
    shape = image.data.shape[: 3 if image.is_stack else 2]
    labels = np.zeros(shape, np.uint32)
    by_plane: dict[int | None, list[tuple[int, CsvObject]]] = {}
    for k, obj in enumerate(prompts, start=1):
        by_plane.setdefault(obj.z if image.is_stack else None, []).append((k, obj))
    tile = config.automatic.tile_size
    for z, objects in by_plane.items():
        plane = image.data[z] if z is not None else image.data
        out = labels[z] if z is not None else labels
        if config.autozoom:
            from ..core.autozoom import AutoZoom

            zoom = AutoZoom(predictor, plane, box_centre=config.box_centre, **norm)
            for k, obj in objects:
                out[zoom.segment(obj.points, obj.labels, obj.box, fill_holes=config.fill_holes,
                                 one_piece=config.one_piece, clip_box=config.clip_box).mask] = k
            continue
        tiled = TiledImage(predictor, plane, tile or max(plane.shape[:2]), config.automatic.tile_overlap, **norm)
        for k, obj in objects:
            region = tiled.segment(obj.points, obj.labels, obj.box, fill_holes=config.fill_holes,
                                   one_piece=config.one_piece, clip_box=config.clip_box,
                                   box_centre=config.box_centre)
            h, w = region.mask.shape
            out[region.y0 : region.y0 + h, region.x0 : region.x0 + w][region.mask] = k
    return labels

