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
import threading

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


EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                      "CLOUD_STORAGE_EMULATOR_ENDPOINT")
FIX_CREDENTIALS = ("set GOOGLE_APPLICATION_CREDENTIALS to a key file, run `gcloud auth "
                   "application-default login`, or run on a Google Cloud VM (for a local "
                   f"emulator, set {', '.join(EMULATOR_VARIABLES)} to its URL)")


def check_reachable(*paths, timeout=8.0):
    """One ValueError naming the fix, within `timeout` seconds, when the bucket of a gs:// path
    among `paths` cannot be used (no credentials, no answer, no bucket, no access), where gcsfs,
    orbax and tfds would retry for a minute. Other paths pass. Every job calls it first."""
    urls = sorted({os.fspath(p) for p in paths if p and os.fspath(p).startswith("gs://")})
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    gcloud = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    product = "/sys/class/dmi/id/product_name"  # 'Google Compute Engine' on Google Cloud VMs
    # Where google.auth would look, found without asking a metadata server (seconds to time out).
    if urls and not (emulator or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                     or os.environ.get("GCE_METADATA_HOST")
                     or os.path.exists(f"{gcloud}/application_default_credentials.json")
                     or os.path.exists(product) and epath.Path(product).read_text().startswith(
                         "Google")):
        raise ValueError(f"{urls[0]}: no Google Cloud credentials found; {FIX_CREDENTIALS}.")
    errors = []
    probe = threading.Thread(target=_probe, args=(urls, emulator, timeout, errors), daemon=True)
    probe.start()
    probe.join(timeout)
    if probe.is_alive():
        errors.append(f"{urls[0]}: no answer from Cloud Storage within {timeout:g} s; check the "
                      "network.")
    if errors:
        raise ValueError(errors[0])


def _probe(urls, emulator, timeout, errors):
    """Lists an object under each URL; the first failure's message goes into `errors`."""
    try:  # imported here: gcsfs brings them, and only runs that use a bucket need them
        import requests
        if emulator:
            session, base = requests.Session(), emulator.rstrip("/")
            base = base if "://" in base else f"http://{base}"
        elif urls:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession
            scope = "https://www.googleapis.com/auth/devstorage.read_write"
            session = AuthorizedSession(google.auth.default(scopes=[scope])[0])
            base = "https://storage.googleapis.com"
        for url in urls:
            bucket, _, prefix = url[len("gs://"):].partition("/")
            try:
                reply = session.get(f"{base}/storage/v1/b/{bucket}/o", timeout=timeout,
                                    params={"maxResults": 1, "prefix": prefix})
            except requests.RequestException as e:
                where = f"STORAGE_EMULATOR_HOST={emulator}" if emulator else base
                return errors.append(f"{url}: cannot reach {where} ({type(e).__name__}); check "
                                     f"{'that the emulator runs' if emulator else 'the network'}.")
            if not reply.ok:
                why = {404: f"there is no bucket {bucket}; create it or fix the name",
                       401: "the credentials are not accepted", 403: "the credentials may not "
                       f"read bucket {bucket}"}.get(reply.status_code, "")
                return errors.append(f"{url}: {why or 'Cloud Storage answered'} (HTTP "
                                     f"{reply.status_code}).")
    except ImportError as e:
        errors.append(f"gs:// paths need gcsfs (pip install gcsfs): {e}.")
    except Exception as e:  # noqa: BLE001  (google.auth's DefaultCredentialsError and kin)
        errors.append(f"{urls[0]}: the Google Cloud credentials do not work ({e}); "
                      f"{FIX_CREDENTIALS}.")


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
