"""Parameters for a task: foreign checkpoints (official LF-ViT, timm DeiT), the converted format,
and a run's saved parameters in the resume order."""
