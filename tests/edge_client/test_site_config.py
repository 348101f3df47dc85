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
    # the template pins fedfleet's own ClientApp and nothing else
    assert config.code.fedfleet_app is True and config.code.fab_sha256 == frozenset()
    assert config.policy.require_secagg is False and config.policy.min_secagg_sites == 2
    assert config.policy.dp_noise_multiplier == 1.0 and config.policy.dp_clip == 1.0


def test_supernode_command_has_tls_auth_and_site_config(tmp_path: Path) -> None:
    config = SiteConfig.load(make_site(tmp_path, {}))
    command = supernode_command(config)
    assert command[command.index("--root-certificates") + 1] == str(config.ca_cert)
    assert command[command.index("--auth-supernode-private-key") + 1] == str(config.private_key)
    assert f'site-config="{config.source}"' in command
    assert "--insecure" not in command
    # the SuperNode starts no app code itself: site join's runner runs only pinned code
    assert command[command.index("--isolation") + 1] == "process"


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
        ({"require-secagg = false": 'require-secagg = "yes"'}, "require-secagg = 'yes' must be"),
        ({"min-secagg-sites = 2": "min-secagg-sites = 1"}, "min-secagg-sites must be at least 2"),
        ({"dp-noise-multiplier = 1.0": "dp-noise-multiplier = 0.0"}, "dp-noise-multiplier must"),
        ({"fedfleet-app = true": 'fedfleet-app = "on"'}, "code.fedfleet-app = 'on' must be"),
        ({"fab-sha256 = []": 'fab-sha256 = ["abc"]'}, "code.fab-sha256 entry 'abc' is not"),
        ({"fab-sha256 = []": f'fab-sha256 = ["{"A" * 64}"]'}, "64 lowercase hex digits"),
        ({"fab-sha256 = []": 'fab-sha256 = "' + "a" * 64 + '"'}, "must be a list of strings"),
        ({"[code]": "[code]\nfab-hash = []"}, "unknown key code.fab-hash"),
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


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"require-dp = true": 'require-dp = "central"'}, "policy.require-dp = 'central'"),
        ({"fab-sha256 = []": 'fab-sha256 = ["' + "0" * 63 + '"]'}, "is not a SHA-256"),
    ],
)
def test_cli_join_refuses_a_bad_policy_or_pin_in_one_line(
    tmp_path: Path, replace: dict[str, str], message: str
) -> None:
    config = make_site(tmp_path, replace)
    result = CliRunner().invoke(site_app, ["join", "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_a_pin_of_64_hex_digits_is_kept(tmp_path: Path) -> None:
    pin = "0123456789abcdef" * 4
    config = SiteConfig.load(make_site(tmp_path, {"fab-sha256 = []": f'fab-sha256 = ["{pin}"]'}))
    assert config.code.fab_sha256 == frozenset({pin})
