"""A GCS emulator (gcp-storage-emulator) on 127.0.0.1, in memory, with one bucket, and the
environment variables that point every GCS client the program uses at it.

`python gcs_emulator.py PORT BUCKET` serves it with three fixes, where GCS itself behaves:
- the emulator answers a suffix range (`Range: bytes=-N`, the last N bytes, which array_record's
  reader asks for first) with the whole object, which corrupts every array_record file over 1 MiB;
- its downloads carry no `x-goog-generation` header, which tensorstore's conditional reads (orbax's
  OCDBT manifest) need ("Malformed StorageGeneration");
- it serves one connection at a time, so array_record's parallel readers, which keep their
  connections open, wait on each other forever: here each connection gets a thread, and requests
  are handled one at a time (its storage is not thread-safe: concurrent writes lost a resumable
  upload's session, and the upload then failed).
"""
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from processes import free_port

BUCKET = "lfvit-test"


def client_env(url):
    """gcsfs and epath, tensorBoard's writer (google-cloud-storage), orbax's tensorstore,
    array_record's reader; gcsfs's gRPC bucket probe off (the emulator serves no gRPC)."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


class Emulator:
    def __init__(self, bucket=BUCKET):
        self.bucket, self.port = bucket, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its log goes to a file: a pipe nobody reads fills up and then blocks the server.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.port), bucket],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}", timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    self.log.seek(0)
                    raise RuntimeError("The GCS emulator did not start: "
                                       + self.log.read().decode(errors="replace"))
                time.sleep(0.1)
        self.env = client_env(self.url)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


def serve(port, bucket):
    import http.server

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    server.server.HTTPServer = http.server.ThreadingHTTPServer
    lock, handle = threading.Lock(), server.Router.handle

    def handle_one_at_a_time(router, method):
        with lock:
            handle(router, method)

    server.Router.handle = handle_one_at_a_time

    download = objects.download

    def download_with_suffix_range(request, response, storage, *args, **kwargs):
        suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", request.get_header("range", "") or "")
        if suffix:
            try:
                size = len(storage.get_file(request.params["bucket_name"],
                                            request.params["object_id"]))
            except Exception:  # a missing object: the emulator's own answer
                size = None
            if size is not None:
                start = max(0, size - int(suffix[1]))
                get_header = request.get_header
                request.get_header = lambda key, default=None: (
                    f"bytes={start}-" if key.lower() == "range" else get_header(key, default))
        download(request, response, storage, *args, **kwargs)
        if response.status.value in (200, 206):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    objects.download = download_with_suffix_range  # `objects.get` (alt=media) calls it too
    server.HANDLERS = tuple(
        (pattern, {m: download_with_suffix_range if h is download else h
                   for m, h in methods.items()})
        for pattern, methods in server.HANDLERS)
    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
