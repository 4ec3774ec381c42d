"""Paths that may live in a bucket (gs://...) or on local disk: the one path layer, `etils.epath`.

A URL stays a URL, never a local folder; libraries that write only to local disk (array_record's
writer, tfds's builders) write into `staging(dst)`, uploaded when it closes. GCS emulators are
named by STORAGE_EMULATOR_HOST (gcsfs, epath, tensorboard), TENSORSTORE_GCS_HTTP_URL (orbax) and
CLOUD_STORAGE_EMULATOR_ENDPOINT (array_record's reader).
"""
import contextlib
import os
import shutil
import tempfile

from etils import epath

# gcsfs first asks GCS over gRPC what kind of bucket it talks to; an emulator serves no gRPC, and
# with credentials the attempt stalls up to 60 s in a failed TLS handshake: switch the probe off
# before gcsfs is imported.
if os.environ.get("STORAGE_EMULATOR_HOST"):
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def list_without_cache():
    """gcsfs keeps every folder listing forever by default, hiding files other processes wrote
    since (checkpoints, eval folders, other hosts' output): every listing is fetched anew."""
    import fsspec.config
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False


list_without_cache()


def is_remote(path):
    return "://" in os.fspath(path)


def path(p):
    """An epath: URLs kept as they are, local paths expanded (~) and made absolute."""
    p = os.fspath(p)
    return epath.Path(p if is_remote(p) else os.path.abspath(os.path.expanduser(p)))


def files(root):
    """Every file under `root`, recursively, sorted (as paths relative to root, '/'-separated)."""
    def walk(folder, prefix):
        for entry in folder.iterdir():
            if entry.is_dir():
                yield from walk(entry, f"{prefix}{entry.name}/")
            else:
                yield prefix + entry.name
    return sorted(walk(path(root), ""))


def copy_tree(src, dst, skip_same_size=True):
    """Copies every file under `src` to `dst` (either may be remote); returns the bytes copied.
    With `skip_same_size`, files already there with the same size are kept: a rerun resumes."""
    src, dst = path(src), path(dst)
    copied = 0
    for rel in files(src):
        source, target = src / rel, dst / rel
        size = source.stat().length
        if skip_same_size and target.exists() and target.stat().length == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not is_remote(source) and not is_remote(target):
            shutil.copyfile(source, target)
        else:
            source.copy(target, overwrite=True)
        copied += size
    return copied


@contextlib.contextmanager
def staging(dst, local=None):
    """A local folder to write into: `dst` itself when local, else `local` (default: temporary),
    uploaded to `dst` when the block succeeds; a kept `local` lets an interrupted job resume."""
    if not is_remote(dst):
        yield os.fspath(path(dst))
    elif local is not None:
        os.makedirs(local, exist_ok=True)
        yield local
        copy_tree(local, dst)
    else:
        with tempfile.TemporaryDirectory(prefix="lfvit_staging_") as local:
            yield local
            copy_tree(local, dst, skip_same_size=False)
