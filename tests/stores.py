"""Object-store servers for the tests, on 127.0.0.1: a GCS emulator and moto's S3 server, each behind a small
proxy (a process of its own, run from this file) that counts requests and bytes and fails a seeded share of
them (503, 429, connection resets, slow answers), or all of them. The tests steer it through ``ProxyControl``.

What the emulators lack that the real services have, and what this module does about it (here, not in the
product):
- gcp-storage-emulator serves no OAuth token endpoint: the proxy answers ``/token``, and the tests' Google
  credentials (a service-account key made for the tests) point there, so clients authenticate as they do against GCS.
- It serves no Storage Control gRPC API, which gcsfs (2026.x) asks for a bucket's layout before each request
  until it has an answer, waiting 60 s for it: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` turns that probe
  off. gcsfs reads it once, when imported: tests/conftest.py sets it for the tests' own process, ``env`` for
  the processes they start, and ``start_store`` refuses to start if gcsfs was imported without it.
- It has no ``moveTo``; nothing in the product moves objects any more.
- Neither emulator models permissions: the proxy refuses writes under a prefix with 403, as a real store
  does for credentials that may read but not write there.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import fsspec
import fsspec.config

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
FAULTS = ("503", "429", "reset", "slow")
CONTROL = "/__control__"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60  # seconds a client waits for one answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} before listening")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s")


@dataclass
class Traffic:
    """What went through the proxy: requests by method, bytes each way, faults injected."""
    requests: dict[str, int] = field(default_factory=dict)
    sent: int = 0  # request bodies, client -> store
    received: int = 0  # response bodies, store -> client
    faults: dict[str, int] = field(default_factory=dict)
    paths: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path without query, bucket/key)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class FaultProxy(ThreadingHTTPServer):
    """A reverse proxy to one upstream port. ``fail_share`` of requests (seeded) get a fault of ``faults``
    instead of an answer; ``fail_share=1``, or ``fail_from`` once a request names a matching object, is a
    store that keeps failing."""

    daemon_threads = True

    def __init__(self, upstream_port: int, scheme: str, seed: int = 0, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), ProxyHandler)
        self.upstream_port, self.scheme = upstream_port, scheme
        self.random = random.Random(seed)
        self.fail_share, self.faults, self.slow_seconds = 0.0, FAULTS, 0.3
        self.read_only_prefix: str | None = None  # "bucket/folder/": writes there are refused with 403
        self.fail_from: str | None = None  # from the first request naming an object with this in it, all fail
        self.failing = False
        self.traffic = Traffic()
        self.lock = threading.Lock()

    def reset(self, fail_share: float = 0.0, seed: int = 0, faults: tuple[str, ...] = FAULTS,
              fail_from: str | None = None, read_only_prefix: str | None = None) -> Traffic:
        with self.lock:
            self.random, self.fail_share, self.faults = random.Random(seed), fail_share, tuple(faults)
            self.fail_from, self.failing, self.read_only_prefix = fail_from, False, read_only_prefix
            counted, self.traffic = self.traffic, Traffic()
        return counted

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a client that hung up: no news
            super().handle_error(request, client_address)

    def draw_fault(self, name: str) -> str | None:
        with self.lock:
            self.failing = self.failing or bool(self.fail_from and self.fail_from in name)
            if self.failing:
                return "503"
            if self.fail_share and self.random.random() < self.fail_share:
                return self.random.choice(self.faults)
        return None

    def count(self, method: str, path: str, name: str, sent: int, received: int, fault: str | None) -> None:
        with self.lock:
            traffic = self.traffic
            traffic.requests[method] = traffic.requests.get(method, 0) + 1
            traffic.sent += sent
            traffic.received += received
            traffic.paths.append((method, path.split("?", 1)[0], name))
            if fault:
                traffic.faults[fault] = traffic.faults.get(fault, 0) + 1


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def answer(self, status: int, body: bytes, headers: list[tuple[str, str]] = (), head: bool = False) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up on this answer (a timeout)
                self.close_connection = True

    def error_body(self, status: int, message: str) -> tuple[bytes, str]:
        if self.server.scheme == "gs":
            return json.dumps({"error": {"code": status, "message": message}}).encode(), "application/json"
        code = {503: "SlowDown", 429: "Throttling", 403: "AccessDenied"}.get(status, "InternalError")
        xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return xml.encode(), "application/xml"

    def handle_any(self) -> None:
        body = self.read_body()
        if self.path.startswith(CONTROL):  # the tests' own requests: settings in, traffic so far out
            settings = json.loads(body or b"{}")
            if self.path == f"{CONTROL}/set":
                with self.server.lock:
                    for name, value in settings.items():
                        setattr(self.server, name, value)
                traffic = Traffic()
            else:
                traffic = self.server.reset(**settings)
            return self.answer(200, json.dumps(asdict(traffic)).encode(), [("Content-Type", "application/json")])
        if self.path.startswith("/token"):  # the emulator's missing OAuth endpoint (module docstring)
            token = json.dumps({"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"})
            return self.answer(200, token.encode(), [("Content-Type", "application/json")])
        fault = self.server.draw_fault(self.object_name(body))
        if fault == "reset":  # the connection drops before any answer: a TCP RST
            self.server.count(self.command, self.path, self.object_name(body), len(body), 0, fault)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return None
        if fault in ("503", "429"):
            self.server.count(self.command, self.path, self.object_name(body), len(body), 0, fault)
            payload, kind = self.error_body(int(fault), "injected fault")
            return self.answer(int(fault), payload, [("Content-Type", kind)], head=self.command == "HEAD")
        if fault == "slow":
            time.sleep(self.server.slow_seconds)
        prefix = self.server.read_only_prefix
        if prefix and self.command in ("PUT", "POST", "PATCH", "DELETE") and prefix in self.object_name(body):
            self.server.count(self.command, self.path, self.object_name(body), len(body), 0, None)
            payload, kind = self.error_body(403, "the caller does not have permission to write here")
            return self.answer(403, payload, [("Content-Type", kind)], head=self.command == "HEAD")
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            if self.command != "HEAD":
                kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
            self.server.count(self.command, self.path, self.object_name(body), len(body), len(payload), fault)
            self.answer(response.status, payload, kept, head=self.command == "HEAD")
        finally:
            upstream.close()

    def object_name(self, body: bytes = b"") -> str:
        """``bucket/key`` of the request, for both APIs (path-style S3; GCS JSON, upload and download URLs, and
        a multipart upload's metadata part)."""
        url = urlparse(self.path)
        parts = unquote(url.path).strip("/").split("/")
        if self.server.scheme == "s3":
            return "/".join(parts)
        after = {word: parts[i + 1:] for i, word in enumerate(parts) if word in ("b", "o")}
        bucket = after["b"][0] if after.get("b") else ""
        name = parse_qs(url.query).get("name", [""])[0] or "/".join(after.get("o", []))
        if not name and "multipart" in url.query:
            found = re.search(rb'"name"\s*:\s*"([^"]+)"', body[:4096])
            name = found.group(1).decode() if found else ""
        return f"{bucket}/{name}"

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = handle_any


class ProxyControl:
    """The proxy, seen from the tests' process. It runs in a process of its own: a client that holds the GIL
    while it waits on the network (Arrow's GCS client does) would otherwise starve the proxy's threads."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, what: str, **settings: object) -> Traffic:
        request = urllib.request.Request(f"{self.url}{CONTROL}/{what}", data=json.dumps(settings).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            counted = json.loads(answer.read())
        return Traffic(**{**counted, "paths": [tuple(row) for row in counted["paths"]]})

    def reset(self, fail_share: float = 0.0, seed: int = 0, faults: tuple[str, ...] = FAULTS,
              fail_from: str | None = None, read_only_prefix: str | None = None) -> Traffic:
        """Traffic since the last reset; from now on the given faults (none by default)."""
        return self.call("reset", fail_share=fail_share, seed=seed, faults=list(faults), fail_from=fail_from,
                         read_only_prefix=read_only_prefix)

    @property
    def read_only_prefix(self) -> None:
        return None

    @read_only_prefix.setter
    def read_only_prefix(self, prefix: str | None) -> None:
        self.call("set", read_only_prefix=prefix)

    @property
    def fail_from(self) -> None:
        return None

    @fail_from.setter
    def fail_from(self, marker: str | None) -> None:
        self.call("set", fail_from=marker)


@dataclass
class Store:
    """A running emulator behind its proxy; ``env`` is what a client process needs to reach it."""
    scheme: str  # "gs" or "s3"
    processes: list[subprocess.Popen]
    proxy: ProxyControl
    folder: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        forget_clients(self.scheme)
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def start_store(scheme: str, folder: Path, seed: int = 0) -> Store:
    """Start the emulator for ``scheme`` and its proxy; the caller stops them (``Store.stop``)."""
    if scheme == "gs" and fsspec.get_filesystem_class("gs").__module__ != "gcsfs.core":
        raise RuntimeError("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set: every "
                           "request would wait 60 s for the emulator's missing gRPC API (module docstring)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proxy_port = next(p for p in iter(free_port, None) if p != port)
    if scheme == "gs":
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}",
                   "--in-memory"]
    else:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    processes = []
    try:
        with open(folder / f"{scheme}-server.log", "wb") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            processes.append(subprocess.Popen([sys.executable, __file__, scheme, str(port), str(proxy_port),
                                               str(seed)], stdout=log, stderr=subprocess.STDOUT))
        wait_for_port(port, processes[0], command[2])
        wait_for_port(proxy_port, processes[1], "the proxy")
    except BaseException:
        for process in processes:
            process.kill()
        raise
    url = f"http://127.0.0.1:{proxy_port}"
    env = gcs_env(url, folder) if scheme == "gs" else s3_env(url, folder)
    forget_clients(scheme)
    return Store(scheme, processes, ProxyControl(url), folder, env)


def forget_clients(scheme: str) -> None:
    """fsspec keeps one filesystem instance per class and arguments, and s3fs binds its client to the endpoint
    it saw first: a store started after another (another test module's) must not be reached through a client
    of the one before."""
    fsspec.get_filesystem_class(scheme).clear_instance_cache()
    # gcsfs waits for an answer without end by default (botocore: 60 s); a lost one becomes a retry, not a hang
    fsspec.config.conf.setdefault("gs", {})["requests_timeout"] = REQUEST_TIMEOUT


def gcs_env(url: str, folder: Path) -> dict[str, str]:
    """A service-account key of the tests' own (a fresh RSA key) whose ``token_uri`` is the proxy's, so
    Google's clients sign and exchange a token as they do against GCS, without the network."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    credentials = folder / "gcs-credentials.json"
    credentials.write_text(json.dumps({
        "type": "service_account", "project_id": "codec-lm-tests", "private_key_id": "tests",
        "private_key": key.decode(), "client_email": "tests@codec-lm-tests.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": f"{url}/token"}))
    return {
        "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage (Beam), gcsfs
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # Google's C++ client (Arrow's GCS filesystem)
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "GOOGLE_CLOUD_PROJECT": "codec-lm-tests",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "FSSPEC_GS": json.dumps({"requests_timeout": REQUEST_TIMEOUT}),  # the processes the tests start
    }


def s3_env(url: str, folder: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-creds"),
    }


if __name__ == "__main__":  # the proxy's own process: SCHEME UPSTREAM_PORT PORT SEED
    scheme, upstream, own, seed = sys.argv[1], *map(int, sys.argv[2:5])
    FaultProxy(upstream, scheme, seed, own).serve_forever()
