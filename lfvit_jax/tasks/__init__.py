"""What each model kind means to the rest of the code (scenic's model object): its forward per
training phase, loss, evaluation outputs, summary, FLOPs and prediction record. Jobs above this
layer (training, evaluation, inference, weight loading) dispatch on the task and never ask which
kind they hold."""
from lfvit_jax.tasks.kinds import TASKS, DeiTTask, LFViTTask, Task, build, for_model

__all__ = ["TASKS", "DeiTTask", "LFViTTask", "Task", "build", "for_model"]
