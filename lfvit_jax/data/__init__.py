"""Input pipelines: tfds (array_record) storage read through grain, without TensorFlow."""
from lfvit_jax.data.defaults import cluttered_mnist_config, get_config, imagenet_config
from lfvit_jax.data.pipeline import (Dataset, class_names, eval_iterator, get_dataset_info,
                                     train_iterator)

__all__ = ["Dataset", "class_names", "cluttered_mnist_config", "eval_iterator", "get_config",
           "get_dataset_info", "imagenet_config", "train_iterator"]
