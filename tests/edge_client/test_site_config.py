"""site.toml: `site init` writes a template that parses once filled in; bad input is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from edge_client.site import init_site, supernode_command
from edge_client.site_cli import app as site_app
from edge_client.site_config import SiteConfig

sys.path.insert(0, str(Path(__file__).parent))
from site_testkit import make_site


def test_init_writes_keys_flower_accepts_and_a_parsable_template(tmp_path: Path) -> None:
    # Execute
    config = SiteConfig.load(make_site(tmp_path, {}))
    # Assert: the OpenSSH EC keys Flower's SuperNode authentication loads
    private = load_ssh_private_key((tmp_path / "st-marys.key").read_bytes(), password=None)
    public = load_ssh_public_key((tmp_path / "st-marys.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert (tmp_path / "st-marys.key").stat().st_mode & 0o077 == 0
    assert config.name == "st-marys"
    assert config.data.schema == {"age": "int", "radius": "float"}
    assert config.policy.allowed_tasks == ("breast-cancer-mlp",)
    assert config.policy.epsilon == 8.0 and config.policy.require_dp is True
    assert config.state_dir == tmp_path / "state"


def test_supernode_command_has_tls_auth_and_site_config(tmp_path: Path) -> None:
    config = SiteConfig.load(make_site(tmp_path, {}))
    command = supernode_command(config)
    assert command[command.index("--root-certificates") + 1] == str(config.ca_cert)
    assert command[command.index("--auth-supernode-private-key") + 1] == str(config.private_key)
    assert f'site-config="{config.source}"' in command
    assert "--insecure" not in command


def test_init_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    init_site(name="a", out_dir=tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        init_site(name="a", out_dir=tmp_path)
    with pytest.raises(ValueError, match="lowercase"):
        init_site(name="Bad Name", out_dir=tmp_path / "x")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"[policy]": "[polcy]"}, "unknown table [polcy]"),
        ({"epsilon = 8.0": "epsilon = -1.0"}, "policy.epsilon must be a positive"),
        ({"epsilon = 8.0": 'epsilon = "lots"'}, "policy.epsilon = 'lots' must be a number"),
        ({"delta = 1e-5": "delta = 2.0"}, "policy.delta must be between 0 and 1"),
        ({'address = "127.0.0.1:9092"': 'address = "nohost"'}, "must be host:port"),
        ({'ca-cert = "ca.crt"': 'ca-cert = "missing.crt"'}, "coordinator.ca-cert"),
        ({'age = "int"': 'age = "integer"'}, "data.schema.age = 'integer'"),
        ({'path = "data/records.csv"': 'path = "data/records.xlsx"'}, "data.format"),
        ({"port = 9094": "port = 70000"}, "supernode.port"),
        ({"require-dp = true": "require-dp = 1"}, "require-dp = 1 must be true or false"),
        ({"[site]": "[site]\ncolour = 1"}, "unknown key site.colour"),
        ({'label = "label"': 'label = "age"'}, "also in data.schema"),
        (
            {'public-key = "st-marys.pub"': 'public-key = "st-marys.pub"\naudit-key = "state/a"'},
            "keys.audit-key",
        ),
    ],
)
def test_bad_site_config_names_the_key(
    tmp_path: Path, replace: dict[str, str], message: str
) -> None:
    path = make_site(tmp_path, replace)
    with pytest.raises(ValueError) as excinfo:
        SiteConfig.load(path)
    assert message in str(excinfo.value)


def test_cli_init_then_join_with_bad_schema_fails_cleanly(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(site_app, ["init", "--name", "h1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h1.pub").exists()
    again = runner.invoke(site_app, ["init", "--name", "h1", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    # join with the untouched template: one clear line naming what to fill in
    join = runner.invoke(site_app, ["join", "--config", str(tmp_path / "site.toml")])
    assert join.exit_code == 2
    assert "[data.schema] lists no feature columns" in join.output
    assert "Traceback" not in join.output


def test_cli_join_reports_schema_mismatch_before_connecting(tmp_path: Path) -> None:
    config = make_site(tmp_path, {})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "records.csv").write_text("age,radius,label\n40,abc,1\n50,2.0,0\n")
    result = CliRunner().invoke(site_app, ["join", "--config", str(config)])
    assert result.exit_code == 2
    assert "column 'radius', row 2: 'abc' is not a valid float" in result.output
