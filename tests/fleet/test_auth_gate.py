"""Authentication happens on the headers, before any byte of a request body is read."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.models.auth import Role

BOUNDARY = b"b0undary"
MiB = 1024 * 1024


class CountingBody:
    """A multipart upload streamed in 1 MiB pieces; counts what the server pulled."""

    def __init__(self, megabytes: int) -> None:
        self.megabytes = megabytes
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        head = b"--" + BOUNDARY
        for piece in (
            head + b'\r\nContent-Disposition: form-data; name="format"\r\n\r\nonnx\r\n',
            head + b'\r\nContent-Disposition: form-data; name="target"\r\n\r\nany\r\n',
            head + b'\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n\r\n',
        ):
            self.pulled += len(piece)
            yield piece
        for _ in range(self.megabytes):
            self.pulled += MiB
            yield b"x" * MiB
        yield b"\r\n" + head + b"--\r\n"


def _post(client: TestClient, body: CountingBody, headers: dict[str, str]) -> Any:
    return client.post(
        "/api/v1/models/1/artifacts",
        content=iter(body),
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"},
    )


@pytest.mark.parametrize(
    ("who", "status"),
    [("nobody", 401), ("unknown", 401), ("viewer", 403)],
)
def test_upload_is_refused_before_its_body_is_read(
    client: TestClient, tokens: dict[Role, str], who: str, status: int
) -> None:
    # Prepare: a 64 MiB upload (under the 512 MiB upload limit) from a caller who may not.
    headers = {
        "nobody": {},
        "unknown": {"Authorization": "Bearer not-a-token"},
        "viewer": {"Authorization": f"Bearer {tokens[Role.viewer]}"},
    }[who]
    body = CountingBody(64)
    # Execute
    response = _post(client, body, headers)
    # Assert: refused, and not one piece of the body was pulled from the client.
    assert response.status_code == status, response.text
    assert body.pulled == 0
    assert response.headers.get("connection") == "close"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_operator_upload_still_reads_its_body(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    # Execute: the same upload with the right role reaches the route (model 1 does not exist).
    body = CountingBody(2)
    response = _post(client, body, {"Authorization": f"Bearer {tokens[Role.operator]}"})
    # Assert: the body was read (the route ran) and the route answered for the missing model.
    assert response.status_code == 404, response.text
    assert body.pulled > 2 * MiB


def _spooled(pid: int, folder: Path) -> int:
    """Bytes in the files process ``pid`` holds open under ``folder``: Python's temporary
    files are unlinked at once (O_TMPFILE), so they are found through ``/proc/PID/fd``."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += fd.stat().st_size
        except OSError:
            continue  # closed meanwhile
    return total


def _raw_upload(port: int, *, megabytes: int, pid: int, spool: Path) -> tuple[int, int, bytes]:
    """Stream an unauthenticated chunked multipart upload to a real server.

    Returns the bytes sent before the server answered or stopped reading, the most the
    server (``pid``) had spooled into ``spool`` meanwhile, and the start of its answer.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(
        b"POST /api/v1/models/1/artifacts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    head = b"".join(CountingBody(0))[: -len(BOUNDARY) - 8]  # the form parts, file opened
    pieces = [head] + [b"x" * (256 * 1024)] * (megabytes * 4)
    sent = peak = 0
    sock.settimeout(1.0)
    try:
        for number, piece in enumerate(pieces):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
            if number % 16 == 0:
                peak = max(peak, _spooled(pid, spool))
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass  # the server answered and stopped reading
    peak = max(peak, _spooled(pid, spool))
    sock.settimeout(10)
    try:
        answer = sock.recv(4096)
    except (ConnectionResetError, TimeoutError):
        answer = b""
    sock.close()
    return sent, peak, answer


def test_a_real_server_spools_nothing_for_an_unauthenticated_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a real `fleet serve` whose temporary files go to a folder of ours.
    import importlib.util
    import sys

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    conftest = sys.modules.get("fleet_fixtures_for_e2e")
    if conftest is None:
        path = Path(__file__).parent / "conftest.py"
        spec = importlib.util.spec_from_file_location("fleet_fixtures_for_e2e", path)
        assert spec is not None and spec.loader is not None
        conftest = importlib.util.module_from_spec(spec)
        sys.modules["fleet_fixtures_for_e2e"] = conftest
        spec.loader.exec_module(conftest)
    with conftest.running_server(tmp_path / "data") as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        # Execute: try to stream 256 MiB without a token.
        started = time.monotonic()
        sent, spooled, answer = _raw_upload(
            port, megabytes=256, pid=server.process.pid, spool=spool
        )
        elapsed = time.monotonic() - started
    # Assert: 401 at once; the server took at most a few socket buffers and wrote nothing.
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert sent <= 16 * MiB, f"the server read {sent / MiB:.0f} MiB before refusing"
    assert spooled == 0
    assert elapsed < 30


def test_the_token_is_looked_up_once_per_request(
    client: TestClient, tokens: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: count the token look-ups (the gate's; the route dependency reuses its caller).
    from fleet.crud import tokens as token_crud

    calls: list[str] = []
    real = token_crud.find_active_token

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("lookup")
        return real(*args, **kwargs)

    monkeypatch.setattr(token_crud, "find_active_token", counting)
    # Execute
    response = client.get(
        "/api/v1/devices", headers={"Authorization": f"Bearer {tokens[Role.viewer]}"}
    )
    # Assert
    assert response.status_code == 200, response.text
    assert calls == ["lookup"]
