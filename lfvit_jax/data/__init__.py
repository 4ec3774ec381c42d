"""Input pipelines: tfds (array_record) storage read through grain, without TensorFlow."""
from lfvit_jax.data.defaults import cluttered_mnist_config, get_config, imagenet_config
from lfvit_jax.data.pipeline import (eval_iterator, get_dataset_info, to_global,
                                     train_iterator)

__all__ = ["cluttered_mnist_config", "eval_iterator", "get_config", "get_dataset_info",
           "imagenet_config", "to_global", "train_iterator"]
