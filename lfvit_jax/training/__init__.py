"""The training job: the loop, DeiT's optimizer and recipe, metrics and preemption."""
