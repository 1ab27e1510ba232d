"""Training: distillation, fine-tuning, evaluation and export (imports torch)."""
