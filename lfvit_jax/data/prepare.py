"""Prepares datasets as tfds array_record datasets, without TensorFlow.

  python -m lfvit_jax.data.prepare cluttered_mnist [--data_dir DIR]
  python -m lfvit_jax.data.prepare folder ROOT --name NAME [--data_dir DIR] [--workers N]
  python -m lfvit_jax.data.prepare imagenet2012 --manual_dir DIR_WITH_TARS [--data_dir DIR]
  python -m lfvit_jax.data.prepare tfds NAME [--data_dir DIR]
"""
import argparse
import logging

import ml_collections
import tensorflow_datasets as tfds

from lfvit_jax.data import convert, pipeline


def _data_dir(args):
    return pipeline.data_dir(ml_collections.ConfigDict({"data_dir": args.data_dir}))


def _folder_version(name):
    """A registered tfds name reads only its own version; only imagenet2012's features match."""
    if name == "imagenet2012":
        return convert.IMAGENET_VERSION
    if name in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"{name!r} is a tfds dataset with its own features; give the folder "
                         "dataset another --name.")
    return "1.0.0"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lfvit_jax.data.prepare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbosity", type=int, default=0,
                        help="1 or more: library logs and tracebacks")
    common.add_argument("--data_dir", default=None,
                        help="tfds data dir (default: $LFVIT_DATA_DIR, else ~/tensorflow_datasets)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cluttered_mnist", parents=[common],
                   help="the embedded dataset (seconds, offline)")

    def add_convert_flags(p):
        p.add_argument("--workers", type=int, default=0, help="processes writing shards")
        p.add_argument("--on_corrupt", choices=("skip", "error"), default="skip",
                       help="skip unreadable images (reported at the end) or stop")
        p.add_argument("--examples_per_shard", type=int, default=1024)

    folder = sub.add_parser(
        "folder", parents=[common], help="ROOT/<split>/<class>/<image> tree (PyTorch layout); "
        "'val' is stored as 'validation'. Resumable.")
    folder.add_argument("root")
    folder.add_argument("--name", required=True, help="dataset name to read it by")
    folder.add_argument("--splits", default=None,
                        help="comma-separated split folders (default: all); classes come "
                             "from the first")
    add_convert_flags(folder)
    imagenet = sub.add_parser(
        "imagenet2012", parents=[common], help="ILSVRC2012_img_{train,val}.tar, labelled as "
        "tfds's imagenet2012. Resumable.")
    imagenet.add_argument("--manual_dir", required=True)
    add_convert_flags(imagenet)
    other = sub.add_parser(
        "tfds", parents=[common], help="any tfds dataset by name, via its own builder (many "
        "builders need TensorFlow to generate; reading never does)")
    other.add_argument("name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data_dir = _data_dir(args)

    if args.command == "cluttered_mnist":
        cfg = ml_collections.ConfigDict({"name": "cluttered_mnist", "data_dir": data_dir})
        print(pipeline.prepared_builder(cfg).data_dir)
    elif args.command == "tfds":
        builder = tfds.builder(args.name, data_dir=data_dir)
        builder.download_and_prepare(file_format="array_record")
        print(builder.data_dir)
    else:
        if args.command == "folder":
            splits, classes = convert.folder_splits(
                args.root, args.splits and args.splits.split(","), args.examples_per_shard)
            name, version = args.name, _folder_version(args.name)
        else:
            splits, classes = convert.imagenet_splits(args.manual_dir, args.examples_per_shard)
            name, version = "imagenet2012", convert.IMAGENET_VERSION
        skipped = convert.write_dataset(data_dir, name, splits, classes, version=version,
                                        on_corrupt=args.on_corrupt, workers=args.workers)
        print(f"Wrote {name} {version} to {data_dir}; corrupt images skipped per split: "
              f"{skipped}")


if __name__ == "__main__":
    import sys

    from lfvit_jax import cli
    sys.exit(cli.guarded(main))
