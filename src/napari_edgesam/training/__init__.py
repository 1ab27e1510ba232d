"""Training: distillation (phase 1 / phase 2), fine-tuning and export (imports torch).

Entry points: :func:`napari_edgesam.training.trainer.train` with a
:class:`napari_edgesam.training.config.TrainConfig`, or ``napari-edgesam train ...``.
"""
