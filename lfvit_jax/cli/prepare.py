"""Prepare a dataset as tfds array_record files, without TensorFlow.

  lfvit prepare cluttered_mnist [--data_dir DIR]
  lfvit prepare folder ROOT --name NAME [--data_dir DIR] [--workers N]
  lfvit prepare imagenet2012 --manual_dir DIR_WITH_TARS [--data_dir DIR]
  lfvit prepare tfds NAME [--data_dir DIR]
  lfvit prepare copy NAME --source gs://BUCKET/data [--data_dir DIR]

cluttered_mnist is embedded (seconds, offline); folder reads ROOT/<split>/<class>/<image> ('val'
is stored as 'validation'); folder and imagenet2012 resume when rerun; tfds uses the dataset's own
builder (many need TensorFlow to generate, reading never does); copy keeps files already there with
the right size. A gs:// --data_dir is written on local disk first (a temporary folder, or
--staging_dir to resume an interrupted conversion), then uploaded.
"""
import logging

import ml_collections
import tensorflow_datasets as tfds
from absl import flags

from lfvit_jax.core.errors import UsageError
from lfvit_jax.data import convert, pipeline
from lfvit_jax.io import storage

ARGS = "cluttered_mnist | folder ROOT | imagenet2012 | tfds NAME | copy NAME"


def _folder_version(name):
    """A registered tfds name reads only its own version; only imagenet2012's features match."""
    if name == "imagenet2012":
        return convert.IMAGENET_VERSION
    if name in tfds.list_builders(with_community_datasets=False):
        raise UsageError(f"{name!r} is a tfds dataset with its own features; give the folder "
                         "dataset another --name.")
    return "1.0.0"


COMMANDS = {"cluttered_mnist": 0, "folder": 1, "imagenet2012": 0, "tfds": 1, "copy": 1}  # arguments
NEEDS = {  # the flag a command needs, and what it names
    "folder": ("name", "the dataset name to read it by"),
    "imagenet2012": ("manual_dir", "the folder with the ILSVRC2012_img_{train,val}.tar files"),
    "copy": ("source", "the data dir that holds the dataset")}


def define_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("data_dir", None, "tfds data dir, local or gs:// (default: "
                        "$LFVIT_DATA_DIR, else ~/tensorflow_datasets)", **d)
    flags.DEFINE_string("staging_dir", None, "with a gs:// --data_dir: the local folder written "
                        "before the upload (default: a temporary one)", **d)
    flags.DEFINE_string("source", None, "copy: the data dir (local or gs://) that holds NAME", **d)
    flags.DEFINE_string("name", None, "folder: the dataset name to read it by", **d)
    flags.DEFINE_list("splits", None, "folder: split folders (default: all); classes come from "
                      "the first", **d)
    flags.DEFINE_string("manual_dir", None, "imagenet2012: the folder with the ILSVRC2012 tars",
                        **d)
    flags.DEFINE_integer("workers", 0, "folder/imagenet2012: processes writing shards", **d)
    flags.DEFINE_enum("on_corrupt", "skip", ["skip", "error"], "skip unreadable images "
                      "(reported at the end) or stop", **d)
    flags.DEFINE_integer("examples_per_shard", 1024, "records per array_record shard", **d)


def main(FLAGS, overrides, args):
    del overrides
    command, *rest = args or [None]
    if command not in COMMANDS or len(rest) != COMMANDS[command]:
        raise UsageError(f"Give one command and its argument: {ARGS}.")
    flag, what = NEEDS.get(command, (None, None))
    if flag and not FLAGS[flag].value:
        raise UsageError(f"{command} needs --{flag}: {what}.")
    storage.check_reachable(FLAGS.data_dir, FLAGS.source)
    logging.basicConfig(level=logging.INFO)
    data_dir = pipeline.data_dir(ml_collections.ConfigDict({"data_dir": FLAGS.data_dir}))
    if command == "copy":
        source = storage.path(FLAGS.source) / rest[0]
        if not source.exists():
            raise UsageError(f"No dataset {rest[0]!r} under {FLAGS.source}.")
        copied = storage.copy_tree(source, storage.path(data_dir) / rest[0])
        print(f"Copied {copied / 2**20:.1f} MiB of {source} to {data_dir}/{rest[0]}")
        return
    with storage.staging(data_dir, FLAGS.staging_dir) as local:
        prepare(FLAGS, command, rest, local)
    if storage.is_remote(data_dir):
        print(f"Uploaded to {data_dir}")


def prepare(FLAGS, command, rest, data_dir):
    """Runs `command` into the local folder `data_dir`."""
    if command == "cluttered_mnist":
        cfg = ml_collections.ConfigDict({"name": "cluttered_mnist", "data_dir": data_dir})
        print(pipeline.prepared_builder(cfg).data_dir)
    elif command == "tfds":
        builder = tfds.builder(rest[0], data_dir=data_dir)
        builder.download_and_prepare(file_format="array_record")
        print(builder.data_dir)
    else:
        if command == "folder":
            splits, classes = convert.folder_splits(rest[0], FLAGS.splits, FLAGS.examples_per_shard)
            name, version = FLAGS.name, _folder_version(FLAGS.name)
        else:
            splits, classes = convert.imagenet_splits(FLAGS.manual_dir, FLAGS.examples_per_shard)
            name, version = "imagenet2012", convert.IMAGENET_VERSION
        skipped = convert.write_dataset(data_dir, name, splits, classes, version=version,
                                        on_corrupt=FLAGS.on_corrupt, workers=FLAGS.workers)
        print(f"Wrote {name} {version} to {data_dir}; corrupt images skipped per split: "
              f"{skipped}")
