"""``device.toml`` and ``fedfleet device run``: bad configuration is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.device_cli import app
from edge_client.device_config import load_config

GOOD = """
device_id = "dev-0123456789abcdef"
target = "cpu-x86"
slots_dir = "slots"
public_key = "fleet.pub"
heartbeat_s = 5
[broker]
host = "127.0.0.1"
port = 8883
password_file = "mqtt.pass"
ca_file = "ca.pem"
[http]
port = 8088
"""


def test_a_good_config_resolves_paths_and_reads_the_password(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("s3cret\n")
    (tmp_path / "device.toml").write_text(GOOD)
    config = load_config(tmp_path / "device.toml")
    assert config.slots_dir == tmp_path / "slots" and config.public_key == tmp_path / "fleet.pub"
    assert config.broker.password == "s3cret" and config.broker.username == config.device_id
    assert config.broker.ca_file == tmp_path / "ca.pem" and config.http_port == 8088
    assert "s3cret" not in repr(config)
    assert config.task is None and config.command_public_key is None


def test_task_and_command_key_are_read(tmp_path: Path) -> None:
    extra = 'task = "digits-cnn"\ncommand_public_key = "cmd.pub"\n'
    (tmp_path / "device.toml").write_text(extra + GOOD)
    (tmp_path / "mqtt.pass").write_text("pw")
    config = load_config(tmp_path / "device.toml")
    assert (config.task, config.command_public_key) == ("digits-cnn", tmp_path / "cmd.pub")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (GOOD.replace('target = "cpu-x86"\n', ""), "'target' is missing"),
        ("colour = 1\n" + GOOD, "unknown keys"),
        (GOOD + "host = '0.0.0.0'\n", "[http] takes only 'port'"),
        (GOOD.replace("heartbeat_s = 5", "heartbeat_s = -1"), "heartbeat_s"),
        (GOOD.replace('"dev-0123456789abcdef"', '"a/b"'), "device id"),
        (GOOD.replace("port = 8883", "port = 8883\nflavour = 2"), "unknown [broker] keys"),
        ("device_id = ", "not valid TOML"),
        ('task = "Digits CNN"\n' + GOOD, "task must be a task name"),
    ],
)
def test_bad_configs_are_refused_with_the_key_to_fix(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "mqtt.pass").write_text("pw")
    (tmp_path / "device.toml").write_text(text)
    with pytest.raises(ValueError) as err:
        load_config(tmp_path / "device.toml")
    assert words in str(err.value)


def test_device_run_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and missing.output.strip().startswith("error:")
    assert "not found" in missing.output and "Traceback" not in missing.output
    (tmp_path / "mqtt.pass").write_text("pw")
    (tmp_path / "device.toml").write_text(GOOD)
    no_key = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "device.toml")])
    assert no_key.exit_code == 2 and "fleet.pub" in no_key.output
    assert not (tmp_path / "slots").exists()
