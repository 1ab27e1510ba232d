"""Every user-visible name of the interactive plugin: layer names, colours, tooltips, shortcuts.

Shortcuts use napari's key syntax (``"Shift-C"``). They are bound on the viewer *and* on the
prompt layers (layer keymaps take precedence over the viewer's, napari #7302) and were chosen
so that none clashes with napari's default keymap (which uses plain letters, Ctrl/Alt
combinations and only ``Shift-A``, ``Shift-L``, ``Shift-P``, ``Shift-V`` of the Shift+letter keys).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- layers ----------------------------------------------------------------------------------
POINTS_LAYER = "EdgeSAM points"
BOXES_LAYER = "EdgeSAM boxes"
PREVIEW_LAYER = "EdgeSAM preview"
LABELS_LAYER = "EdgeSAM labels"

#: Feature of the points layer: True for a positive (foreground) point, False for negative.
POSITIVE_FEATURE = "positive"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
BOX_EDGE_COLOR = "yellow"
POINT_SIZE = 8
#: The preview is drawn as outlines in this colour (committed objects are filled, in the label
#: colours), so the two never look alike.
PREVIEW_COLOR = "cyan"
PREVIEW_CONTOUR = 2

# -- combo-box entries -----------------------------------------------------------------------
NEW_LABELS_CHOICE = f"new layer: {LABELS_LAYER}"
CUSTOM_MODEL_CHOICE = "custom file..."
NO_CHANNEL_AXIS = "none"
COMPOSITE_CHANNEL = "composite"
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
DIRECTION_CHOICES = {"both directions": "both", "forward (z+)": "forward", "backward (z-)": "backward"}


# -- keyboard shortcuts ----------------------------------------------------------------------
@dataclass(frozen=True)
class Shortcut:
    """A key bound to an action of the interactive controller.

    Attributes:
        action: name of the controller method that runs (no arguments).
        key: napari key syntax, e.g. ``"Shift-C"``.
        description: what it does, shown in the widget.
    """

    action: str
    key: str
    description: str


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("commit", "Shift-C", "commit the preview into the target labels"),
    Shortcut("toggle_polarity", "Shift-N", "toggle positive / negative for new points"),
    Shortcut("cycle_candidate", "Shift-M",
             "next candidate mask (after a whole-object click: the 4 candidates, then the whole object again)"),
    Shortcut("clear", "Shift-X", "clear prompts and preview"),
    Shortcut("undo_commit", "Shift-U", "undo the last commit"),
    Shortcut("draw_box", "Shift-B", "draw a box: select the boxes layer's rectangle tool"),
)


def shortcut_for(action: str) -> Shortcut:
    """The shortcut bound to ``action`` (``KeyError`` if none is)."""
    for sc in SHORTCUTS:
        if sc.action == action:
            return sc
    raise KeyError(f"no shortcut for action {action!r}")


def shortcuts_text() -> str:
    """One line per shortcut, for the widget's help label."""
    return "\n".join(f"{sc.key.replace('-', '+')}: {sc.description}" for sc in SHORTCUTS)


# -- tooltips --------------------------------------------------------------------------------
TOOLTIPS: dict[str, str] = {
    "model": "Registered EdgeSAM models (downloaded on first use) or a custom .pth / .onnx file.",
    "backend": "auto: torch if installed, else onnxruntime.",
    "device": "auto picks CUDA, then Apple MPS, then the CPU.",
    "load": "Load the chosen model in the background.",
    "image": "The image layer to segment; the displayed 2D plane is the one segmented.",
    "channel_axis": "Treat this axis of the layer as channels (e.g. a C x Y x X stack).",
    "channel": "Segment one channel, or a composite of all of them.",
    "target": "Labels layer that committed objects are written into.",
    "overwrite": "Let committed objects replace existing labels (otherwise only background changes).",
    "commit": f"Write the preview into the target labels as new objects ({shortcut_for('commit').key}).",
    "clear": f"Remove all prompts and the preview ({shortcut_for('clear').key}).",
    "undo": f"Restore the target labels as they were before the last commit ({shortcut_for('undo_commit').key}).",
    "polarity": f"Whether new points are positive or negative ({shortcut_for('toggle_polarity').key}).",
    "candidate": ("Next candidate mask (after a whole-object click: the 4 candidates, then the whole object "
                  f"again) ({shortcut_for('cycle_candidate').key})."),
    "draw_box": (f"Select the '{BOXES_LAYER}' layer with its rectangle tool: drag a box around an object "
                 f"({shortcut_for('draw_box').key})."),
    "add_points": f"Select the '{POINTS_LAYER}' layer in add mode: click to add points.",
    "precompute": "Embed every slice of the stack now (cached), so any slice answers at once.",
    "cancel_precompute": "Stop embedding the stack after the current slice.",
    "cache_dir": ("Optional folder that keeps embeddings on disk between sessions (at most 10 GiB: the "
                  "least recently used slices are deleted first)."),
    "propagate": "Follow the preview objects (or the target's selected label) through the stack.",
    "direction": "Which way to propagate beyond the annotated slices.",
    "cancel_propagation": "Stop propagating; the slices found so far are kept in the preview.",
}

#: How to prompt, shown in the widget.
PROMPT_HINT = (f"Click on the image to add points (layer '{POINTS_LAYER}'). For a box, press 'Draw box' "
               f"(or select the layer '{BOXES_LAYER}' and its rectangle tool) and drag around the object; "
               "'Add points' goes back to clicking.")

# -- granularity prior -----------------------------------------------------------------------
#: The checkbox of the whole-object click.
AUTOZOOM_TEXT = "AutoZoom boxes (crop at the best scale)"
AUTOZOOM_TIP = ("A box around an object much smaller or larger than the nuclei the model knows best is "
                "segmented in a crop embedded at that scale (cached; a new crop takes about as long as "
                "embedding the image). Clicks are not zoomed.")
WHOLE_OBJECT_TEXT = "A click takes the whole object (granularity prior)"
WHOLE_OBJECT_TIP = ("One positive click (no other point, no box) segments the whole object under it: the "
                    "model's granularity prior proposes boxes and EdgeSAM's rule joins the best nearby box "
                    "to the click. More points, negative points or a box refine as usual; "
                    "'Next candidate' shows the 4 plain candidates.")
NO_MODEL_TIP = "load a model first"

