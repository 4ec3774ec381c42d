"""Paths that may live in a bucket (gs://...) or on local disk: the one path layer.

Every file the program reads or writes goes through `etils.epath` (gcsfs for gs://, tensorstore
for orbax's arrays). A URL stays a URL: it never becomes a local folder. Libraries that write only
to local disk (array_record's writer, tfds's builders) write into `staging(dst)`, whose files are
uploaded when it closes.

GCS emulators: STORAGE_EMULATOR_HOST (gcsfs, epath, tensorBoard's events),
TENSORSTORE_GCS_HTTP_URL (orbax's arrays) and CLOUD_STORAGE_EMULATOR_ENDPOINT (array_record's
reader) point at it. gcsfs first asks GCS over gRPC what kind of bucket it talks to; an emulator
serves no gRPC, and with credentials the attempt stalls up to 60 s in a failed TLS handshake, so
with an emulator set that probe is switched off (before gcsfs is imported).
"""
import contextlib
import os
import shutil
import tempfile

from etils import epath

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GCSFS_GRPC_PROBE_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def use_emulator_settings():
    if os.environ.get(EMULATOR_ENV):
        os.environ.setdefault(GCSFS_GRPC_PROBE_ENV, "false")


def list_without_cache():
    """gcsfs keeps every folder listing it fetched, forever by default: a file another process
    wrote since (a checkpoint, an eval folder, another host's output) stays invisible to
    exists(), iterdir() and open(). Every listing is fetched anew instead."""
    import fsspec.config
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False


use_emulator_settings()
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
    """Copies every file under `src` to the same relative path under `dst` (either may be
    remote). With `skip_same_size`, a file already at `dst` with the same size is kept, so an
    interrupted copy resumes. Returns the number of bytes copied."""
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
    """A local folder to write into: `dst` itself when local, else `local` (default: a temporary
    folder) whose files are uploaded to `dst` when the block ends without an error. A kept
    `local` folder lets an interrupted job resume; its files already uploaded are skipped."""
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
