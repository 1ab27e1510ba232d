"""Training and evaluation of the granularity prior (the box head on the frozen encoder).

``napari-edgesam train prior ...`` / ``napari-edgesam train prior-evaluate ...``; see
:mod:`.train_prior` and :mod:`.evaluate_prior`. Importing this package imports torch.
"""
