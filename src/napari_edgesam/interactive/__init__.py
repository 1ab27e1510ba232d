"""The interactive segmentation model without Qt or napari: session, planes, stacks."""
