"""Where the coordinator listens: coordinator.toml's control and operator addresses,
the SuperLink command and Flower CLI connection they produce, and operator certificates."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import tomllib
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from coordinator.certs import (
    certificate_hosts,
    create_dev_ca,
    create_operator_cert,
    load_certificate,
)
from coordinator.cli import certs_app
from coordinator.superlink import CoordinatorSettings, flwr_env, is_loopback, superlink_command


def _load(tmp_path: Path, superlink: str) -> CoordinatorSettings:
    path = tmp_path / "coordinator.toml"
    path.write_text("[superlink]\n" + superlink)
    return CoordinatorSettings.load(path)


def test_superlink_listens_on_loopback_and_flwr_dials_it_there(tmp_path: Path) -> None:
    # Prepare
    settings = _load(tmp_path, 'address = "0.0.0.0:9092"\n')
    # Execute
    command = superlink_command(settings)
    env = flwr_env(settings)
    # Assert: the public address is the gateway's; Flower binds and is dialled on loopback
    assert settings.address == "0.0.0.0:9092"
    assert settings.control_address == "127.0.0.1:9093"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "9093"
    config = tomllib.loads((Path(env["FLWR_HOME"]) / "config.toml").read_text())
    assert config["superlink"]["fedfleet"]["address"] == "127.0.0.1:9093"
    assert settings.operator_port == 0


@pytest.mark.parametrize(
    ("superlink", "message"),
    [
        ('control-address = "0.0.0.0:9093"\n', "must be a loopback address"),
        ('control-address = "10.1.2.3:9093"\n', "must be a loopback address"),
        ('control-address = "coord.example.org:9093"\n', "must be a loopback address"),
        ('control-address = "127.0.0.1"\n', "superlink.control-address '127.0.0.1' must be"),
        ('address = "0.0.0.0:9093"\n', "different ports"),
        ('operator-address = "0.0.0.0:9092"\n', "different ports"),
        ('operator-address = ""\n', "operator-address must be a non-empty string"),
    ],
)
def test_bad_addresses_are_refused_with_the_key_to_fix(
    tmp_path: Path, superlink: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        _load(tmp_path, superlink)
    assert "\n" not in str(info.value)


def test_operator_address_and_ipv6_loopback(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        'address = "0.0.0.0:9092"\ncontrol-address = "[::1]:7000"\n'
        'operator-address = "0.0.0.0:9443"\n',
    )
    assert (settings.operator_host, settings.operator_port) == ("0.0.0.0", 9443)
    assert settings.control_address == "[::1]:7000"
    assert settings.operator_ca == tmp_path / "certs" / "operator-ca.crt"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("localhost.evil", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_server_certificate_without_the_control_host_is_refused(tmp_path: Path) -> None:
    create_dev_ca(tmp_path / "certs", hosts=("coord.example.org",))
    settings = _load(tmp_path, 'address = "0.0.0.0:9092"\n')
    with pytest.raises(ValueError, match="not valid for 127.0.0.1.*fedfleet certs create"):
        settings.check_tls_files()


def test_operator_address_needs_the_operator_ca(tmp_path: Path) -> None:
    create_dev_ca(tmp_path / "certs")
    settings = _load(tmp_path, 'operator-address = "0.0.0.0:9443"\n')
    with pytest.raises(ValueError, match="certs create-operator"):
        settings.check_tls_files()
    create_operator_cert(tmp_path / "certs", name="alice")
    settings.check_tls_files()  # now complete


def test_certs_create_always_covers_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        certs_app, ["create", "--out", str(tmp_path), "--host", "coord.example.org"]
    )
    assert result.exit_code == 0, result.output
    hosts = certificate_hosts(load_certificate(tmp_path / "server.crt"))
    assert sorted(hosts) == ["127.0.0.1", "coord.example.org", "localhost"]


def test_operator_certificate_chains_only_to_the_operator_ca(tmp_path: Path) -> None:
    # Prepare
    site_ca = create_dev_ca(tmp_path)
    # Execute: two operators share one operator CA
    alice = create_operator_cert(tmp_path, name="alice")
    bob = create_operator_cert(tmp_path, name="bob", days=30)
    # Assert
    operator_ca = load_certificate(alice.operator_ca)
    cert = load_certificate(alice.certificate)
    cert.verify_directly_issued_by(operator_ca)
    load_certificate(bob.certificate).verify_directly_issued_by(operator_ca)
    with pytest.raises((ValueError, TypeError, InvalidSignature)):
        cert.verify_directly_issued_by(load_certificate(site_ca.ca_cert))
    assert operator_ca.subject != load_certificate(site_ca.ca_cert).subject
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in (alice.private_key, tmp_path / "operator-ca.key"):
        assert key.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="already exists"):
        create_operator_cert(tmp_path, name="alice")


def test_certs_create_operator_cli(tmp_path: Path) -> None:
    ok = CliRunner().invoke(certs_app, ["create-operator", "alice", "--out", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "operator-alice.crt").is_file()
    bad = CliRunner().invoke(certs_app, ["create-operator", "al ice", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "letters, digits" in bad.output


def test_coordinator_up_refuses_a_public_port_in_use_before_starting_the_superlink(
    tmp_path: Path,
) -> None:
    # Prepare: the public port is taken by someone else
    from coordinator.cli import coordinator_app

    create_dev_ca(tmp_path / "certs")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "coordinator.toml"
        config.write_text(
            f'[superlink]\naddress = "127.0.0.1:{port}"\ncontrol-address = "127.0.0.1:{port + 1}"\n'
        )
        # Execute
        result = CliRunner().invoke(coordinator_app, ["up", "--config", str(config)])
    # Assert: one line naming the address; the SuperLink never started (no database)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "state" / "superlink.db").exists()
