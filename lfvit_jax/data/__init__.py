"""Input pipelines: tfds (array_record) storage read through grain, without TensorFlow."""
