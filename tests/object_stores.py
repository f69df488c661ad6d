"""Local object-store emulators for the tests: moto's S3 server and fake-gcs-server, on 127.0.0.1.

Each emulator runs as a process of its own (a session leader, stopped by its PID) on a free port,
and hands out a fresh bucket per test together with the environment a stage's subprocess needs to
reach it, and a listing of the bucket through the emulator's own API (not through our code).

gs:// has two clients in every stage: Beam's (the google-cloud-storage library, which honours
`STORAGE_EMULATOR_HOST`) and TensorFlow's built-in file system (tf.io.gfile, used by TFDV's
loaders, TFT, Keras, TFMA), whose endpoints `https://www.googleapis.com/...` and
`https://storage.googleapis.com/...` are compiled in. TensorFlow's requests go through libcurl,
which honours `HTTPS_PROXY` and `CURL_CA_BUNDLE`: `GcsTunnel` is that proxy. It accepts CONNECT
only to those hosts (and Google's token host), ends TLS with a certificate from a throw-away CA made
here, and forwards the plain requests to fake-gcs-server, dropping the obsolete
`Transfer-Encoding: identity` header TensorFlow sends and Go's server refuses. Nothing leaves the
machine; nothing of TensorFlow is patched or swapped for another file system.

Beam's client reaches fake-gcs-server through `_BatchShim`, which runs the JSON API's batch
requests part by part (the emulator answers a batch of deletes with no parts); the tunnel also
forwards TensorFlow's chunked uploads with a plain length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http.client
import http.server
import json
import os
import pathlib
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

from tests.conftest import REPO_ROOT

__all__ = [
    "FakeGcs",
    "MotoS3",
    "ObjectStore",
    "fake_gcs_binary",
    "free_port",
]

FAKE_GCS_SH = REPO_ROOT / "scripts" / "fake_gcs_server.sh"
# The hosts TensorFlow's built-in gs:// file system talks to (compiled into TensorFlow 2.16).
GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
# Google's auth library refreshes user credentials here (its token endpoint, also compiled in).
TOKEN_HOST = "oauth2.googleapis.com"
# Emulators start in about a second; a loaded 2-core machine gets this much.
START_TIMEOUT_S = 60
# Any credentials: the emulators accept every key and token, our code must pass them through.
S3_KEY_ID = "testing-key-id"
S3_SECRET = "testing-secret"
S3_REGION = "us-east-1"
GCS_TOKEN = "testing-token"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(process: subprocess.Popen, port: int, log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"emulator exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {START_TIMEOUT_S} s; see {log}")


def _start(command: list[str], port: int, log: pathlib.Path) -> subprocess.Popen:
    """`command` in a session of its own, output to `log`, once it listens on `port`."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_listening(process, port, log)
    except BaseException:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    """Ends the process we started, by its PID: TERM, then KILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fake_gcs_binary() -> pathlib.Path | None:
    """fake-gcs-server, built by scripts/fake_gcs_server.sh on first use; None without `go`."""
    if shutil.which("go") is None and not pathlib.Path("/usr/local/go/bin/go").exists():
        return None
    done = subprocess.run(
        ["bash", str(FAKE_GCS_SH), "build"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/fake_gcs_server.sh build failed: {done.stderr[-2000:]}")
    return pathlib.Path(done.stdout.strip())


class ObjectStore:
    """An emulator; `bucket()` makes a fresh bucket, `env` reaches it from a subprocess."""

    scheme: str

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        raise NotImplementedError

    def keys(self, bucket: str) -> list[str]:
        """Every object name in `bucket`, listed through the emulator's API."""
        raise NotImplementedError

    def read(self, bucket: str, key: str) -> bytes:
        """One object's bytes, read through the emulator's API."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment variables a stage's process needs to reach the emulator."""
        raise NotImplementedError

    def beam_flags(self) -> list[str]:
        """Beam options that point Beam's file system at the emulator."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def _new_bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class MotoS3(ObjectStore):
    """moto's S3 server (`python -m moto.server`), a process on 127.0.0.1."""

    scheme = "s3"

    def __init__(self, work_dir: pathlib.Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process = _start(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            self.port,
            work_dir / "moto.log",
        )

    def _client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )

    def bucket(self) -> str:
        name = _new_bucket_name()
        self._client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def env(self) -> dict[str, str]:
        # Beam's S3 client takes the flags below; TensorFlow's (tensorflow-io's) s3:// file system
        # and any boto3 client take these variables.
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": S3_REGION,
            "AWS_DEFAULT_REGION": S3_REGION,
            "S3_ENDPOINT": self.endpoint,
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    def beam_flags(self) -> list[str]:
        return [
            f"--s3_endpoint_url={self.endpoint}",
            f"--s3_access_key_id={S3_KEY_ID}",
            f"--s3_secret_access_key={S3_SECRET}",
            f"--s3_region_name={S3_REGION}",
        ]

    def stop(self) -> None:
        _stop(self._process)


def _certificates(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A throw-away CA and a server certificate for GCS_HOSTS signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        "beam-ml-pipelines test CA",
        "beam-ml-pipelines test CA",
        ca_key.public_key(),
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True)],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(host) for host in (*GCS_HOSTS, TOKEN_HOST)]
    server = certificate(
        GCS_HOSTS[0],
        "beam-ml-pipelines test CA",
        key.public_key(),
        ca_key,
        [
            (x509.SubjectAlternativeName(names), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
        ],
    )
    pem = serialization.Encoding.PEM
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class _TunnelHandler(socketserver.StreamRequestHandler):
    """`CONNECT <host>:443`: GCS_HOSTS reach fake-gcs-server, TOKEN_HOST gets a token from here.

    Anything else is refused, so nothing leaves the machine. The token serves Google's auth
    library in Beam's client: without credentials Beam retries its lookup for ~25 s per process.
    """

    # Unbuffered: no byte of the tunnelled stream may wait in a reader's buffer.
    rbufsize = 0

    def handle(self) -> None:
        request = self.rfile.readline(8192).decode("latin-1").split()
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass
        host, _, port = request[1].rpartition(":") if len(request) == 3 else ("", "", "")
        if request[:1] == ["CONNECT"] and port == "443" and host in (*GCS_HOSTS, TOKEN_HOST):
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            client = self.server.tls.wrap_socket(self.connection, server_side=True)
            if host == TOKEN_HOST:
                _answer_token(client)
            else:
                self._tunnel(client)
            return
        self.wfile.write(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )

    def _tunnel(self, client: ssl.SSLSocket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port))
        replies = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
        replies.start()
        try:
            reader = client.makefile("rb")
            while head := _request_head(reader):
                if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                    # TensorFlow's uploads say both chunked and a Content-Length, and send chunks:
                    # forward the body whole, with its length only.
                    body = _read_chunked(reader)
                    head = re.sub(rb"(?im)^(transfer-encoding|content-length):[^\n]*\n", b"", head)
                    head = head[:-2] + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    upstream.sendall(head + body)
                    continue
                upstream.sendall(head)
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(match[1]) if match else 0
                while length > 0:
                    chunk = reader.read(min(length, 1 << 16))
                    if not chunk:
                        return
                    upstream.sendall(chunk)
                    length -= len(chunk)
        except OSError:
            return
        finally:
            upstream.shutdown(socket.SHUT_WR)
            replies.join(timeout=30)
            upstream.close()
            client.close()


def _read_chunked(reader) -> bytes:
    """A chunked request body, decoded."""
    body = b""
    while size := int(reader.readline(1024).split(b";")[0].strip() or b"0", 16):
        body += reader.read(size)
        reader.readline(1024)  # The CRLF after the chunk.
    while reader.readline(8192) not in (b"\r\n", b"\n", b""):  # Trailers, if any.
        pass
    return body


def _answer_token(client: ssl.SSLSocket) -> None:
    reader = client.makefile("rb")
    head = _request_head(reader)
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    reader.read(int(match[1]) if match else 0)
    body = json.dumps({"access_token": GCS_TOKEN, "expires_in": 3600}).encode()
    client.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    client.close()


def _request_head(reader) -> bytes:
    """The next request's line and headers, less `Transfer-Encoding: identity`.

    TensorFlow's curl sends that header on requests without a body (a resumable upload's start);
    it is obsolete in HTTP/1.1 and Go's server, fake-gcs-server's, refuses it with 501.
    """
    lines = []
    while (line := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
        if not re.match(rb"(?i)transfer-encoding:\s*identity\s*$", line):
            lines.append(line)
    if not lines:
        return b""
    # The request came over TLS: upload URLs fake-gcs-server hands back must say https.
    return b"".join([*lines, b"X-Forwarded-Proto: https\r\n", b"\r\n"])


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.close()


class GcsTunnel(socketserver.ThreadingTCPServer):
    """The HTTPS proxy TensorFlow's built-in gs:// file system is sent through (see the module)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int, cert: pathlib.Path, key: pathlib.Path) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.upstream_port = upstream_port
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _BatchHandler(http.server.BaseHTTPRequestHandler):
    """Forwards Beam's requests to fake-gcs-server, answering batch requests itself.

    Beam deletes objects through the JSON API's batch endpoint; fake-gcs-server (v1.56.1) answers
    a batch of deletes with an empty multipart body, which google-cloud-storage rejects ("Bad
    response: not multi-part"). Real GCS runs each part: so does this handler, one request each.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # Quiet: the test's output is the stages'.
        pass

    def _upstream(self, method: str, path: str, headers: dict, body: bytes):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response, data

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/batch/"):
            status, headers, data = 200, *self._batch(body)
        else:
            kept = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            response, data = self._upstream(self.command, self.path, kept, body)
            status = response.status
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _batch(self, body: bytes):
        boundary = re.search(r'boundary="?([^";]+)', self.headers["Content-Type"])[1].encode()
        parts = [part for part in body.split(b"--" + boundary)[1:] if not part.startswith(b"--")]
        answer = []
        for index, part in enumerate(parts, 1):
            # Parts as google-cloud-storage writes them: MIME headers, a blank line, the request;
            # its lines may end in "\n" alone.
            part = part.replace(b"\r\n", b"\n").strip(b"\n")
            request = part.split(b"\n\n", 1)[1]
            head, _, sub_body = request.partition(b"\n\n")
            lines = head.decode("latin-1").split("\n")
            method, url, _ = lines[0].split(" ", 2)
            sub_headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            target = urllib.parse.urlsplit(url)
            path = target.path + (f"?{target.query}" if target.query else "")
            response, data = self._upstream(method, path, sub_headers, sub_body.strip(b"\n"))
            answer.append(
                b"--"
                + boundary
                + b"\r\nContent-Type: application/http\r\n"
                + f"Content-ID: <response-{index}>\r\n\r\n".encode()
                + f"HTTP/1.1 {response.status} {response.reason}\r\n".encode()
                + f"Content-Type: {response.getheader('Content-Type') or 'text/plain'}\r\n".encode()
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
                + b"\r\n"
            )
        answer.append(b"--" + boundary + b"--\r\n")
        content_type = f"multipart/mixed; boundary={boundary.decode()}"
        return [("Content-Type", content_type)], b"".join(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay


_HOP_HEADERS = ("connection", "transfer-encoding", "content-length", "keep-alive", "host")


class _BatchShim(http.server.ThreadingHTTPServer):
    """Beam's endpoint: fake-gcs-server behind `_BatchHandler`, on a free port of 127.0.0.1."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _BatchHandler)
        self.upstream_port = upstream_port
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FakeGcs(ObjectStore):
    """fake-gcs-server on 127.0.0.1: HTTP for Beam's client, HTTPS (through GcsTunnel) for TF's."""

    scheme = "gs"

    def __init__(self, binary: pathlib.Path, work_dir: pathlib.Path) -> None:
        self.http_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.http_port}"
        self._ca, cert, key = _certificates(work_dir)
        self._credentials = work_dir / "credentials.json"
        self._process = _start(
            [
                str(binary),
                "-host=127.0.0.1",
                "-scheme=http",
                f"-port={self.http_port}",
                "-backend=memory",
                "-log-level=warn",
            ],
            self.http_port,
            work_dir / "fake-gcs-server.log",
        )
        self._tunnel = GcsTunnel(self.http_port, cert, key)
        self._beam_endpoint = _BatchShim(self.http_port)
        # Credentials of the kind `gcloud auth application-default login` writes, refreshed at
        # TOKEN_HOST through the tunnel.
        self._credentials.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "testing",
                    "client_secret": "testing",
                    "refresh_token": "testing",
                }
            )
        )

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            return json.load(response)

    def bucket(self) -> str:
        name = _new_bucket_name()
        self._json("POST", "b", {"name": name})
        return name

    def keys(self, bucket: str) -> list[str]:
        names, token = [], None
        while True:
            query = urllib.parse.urlencode({"pageToken": token} if token else {})
            page = self._json("GET", f"b/{bucket}/o?{query}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, bucket: str, key: str) -> bytes:
        quoted = urllib.parse.quote(key, safe="")
        request = f"{self.endpoint}/storage/v1/b/{bucket}/o/{quoted}?alt=media"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            return response.read()

    def env(self) -> dict[str, str]:
        return {
            # Beam's client (google-cloud-storage) and Google's auth library.
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self._beam_endpoint.port}",
            "GOOGLE_APPLICATION_CREDENTIALS": str(self._credentials),
            "NO_GCE_CHECK": "true",
            "GOOGLE_CLOUD_PROJECT": "testing",
            # TensorFlow's built-in file system: a fixed token, the tunnel, the throw-away CA.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": GCS_TOKEN,
            "HTTPS_PROXY": f"http://127.0.0.1:{self._tunnel.port}",
            "https_proxy": f"http://127.0.0.1:{self._tunnel.port}",
            "CURL_CA_BUNDLE": str(self._ca),
            "REQUESTS_CA_BUNDLE": str(self._ca),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def beam_flags(self) -> list[str]:
        return ["--project=testing"]

    def stop(self) -> None:
        self._beam_endpoint.stop()
        self._tunnel.stop()
        _stop(self._process)


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One test's bucket on an emulator."""

    store: ObjectStore
    name: str

    @property
    def root(self) -> str:
        return f"{self.store.scheme}://{self.name}"

    def object_names(self) -> list[str]:
        return self.store.keys(self.name)

    def read_json(self, key: str) -> dict:
        return json.loads(self.store.read(self.name, key))


def emulator(scheme: str, work_dir: pathlib.Path) -> Iterator[ObjectStore]:
    """Starts the emulator of `scheme`, yields it, stops it."""
    if scheme == "s3":
        store: ObjectStore = MotoS3(work_dir)
    else:
        binary = fake_gcs_binary()
        if binary is None:
            import pytest

            pytest.skip("go is not installed: scripts/fake_gcs_server.sh builds fake-gcs-server")
        store = FakeGcs(binary, work_dir)
    try:
        yield store
    finally:
        store.stop()


def stage_env(store: ObjectStore) -> dict[str, str]:
    """This process's environment plus what reaches `store`."""
    return {**os.environ, **store.env()}
