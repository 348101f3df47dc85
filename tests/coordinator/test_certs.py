"""Development CA: a server certificate Python's TLS stack accepts for 127.0.0.1/localhost."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from coordinator.certs import certificate_hosts, create_dev_ca, load_certificate
from coordinator.cli import certs_app


def test_server_certificate_is_signed_by_the_ca_with_sans(tmp_path: Path) -> None:
    # Execute
    paths = create_dev_ca(tmp_path, hosts=("127.0.0.1", "localhost", "coord.example"))
    # Assert
    ca, server = load_certificate(paths.ca_cert), load_certificate(paths.server_cert)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sorted(certificate_hosts(server)) == ["127.0.0.1", "coord.example", "localhost"]
    assert paths.ca_key.stat().st_mode & 0o077 == 0
    assert paths.server_key.stat().st_mode & 0o077 == 0


def test_tls_handshake_on_loopback_verifies_and_a_foreign_ca_fails(tmp_path: Path) -> None:
    """Integration: a real TLS server with the certificate; clients with the right and
    the wrong CA."""
    paths = create_dev_ca(tmp_path / "good")
    other = create_dev_ca(tmp_path / "other")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        good = ssl.create_default_context(cafile=str(paths.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            good.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() is not None
        bad = ssl.create_default_context(cafile=str(other.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            bad.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        listener.close()
        thread.join(timeout=5)


def test_existing_files_are_not_replaced_without_force(tmp_path: Path) -> None:
    create_dev_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        create_dev_ca(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == before
    create_dev_ca(tmp_path, overwrite=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--host", "bad host"], "is not an IP address"), (["--days", "0"], "--days must be")],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "certs"
    result = CliRunner().invoke(certs_app, ["create", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_creates_the_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(certs_app, ["create", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
