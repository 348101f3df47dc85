"""The conformance kit's parts that need no broker: which checks run, the reports, the
validation seam, the fault-injecting chunk server's bookkeeping and the command line's
bad input (one line, exit 2, nothing started). The kit against real agents over real
Mosquitto: tests/e2e/test_device_conformance.py."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_client.protocol import mqtt as proto
from fedfleet.cli import build_app
from fleet.ota.conformance.checks import NAMES, select
from fleet.ota.conformance.fleet_side import Transfer
from fleet.ota.conformance.report import Result, summary, write_report
from fleet.ota.conformance.validate import ProtocolError, validate


def test_only_adds_what_a_check_needs_in_run_order() -> None:
    # Execute
    chosen = [c.name for c in select(["unsigned-rollback-refused"])]
    # Assert: its installs and the status check come first, nothing else
    assert chosen == [
        "status-online",
        "install",
        "resume-after-disconnect",
        "unsigned-rollback-refused",
    ]
    assert [c.name for c in select(None)] == list(NAMES)


def test_only_refuses_an_unknown_check_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown checks \\['instal'\\]; choose from status"):
        select(["instal"])


def test_validate_holds_messages_to_the_v2_schemas_then_the_codec() -> None:
    # Prepare
    good = proto.encode(proto.Heartbeat(uptime_s=1.5))
    ack_null = b'{"schema":2,"type":"ack","command_id":"c","ok":true,"action":"ping","error":null}'
    # Execute / Assert
    assert validate("heartbeat", good) == proto.Heartbeat(uptime_s=1.5)
    assert isinstance(validate("ack", ack_null), proto.Ack)  # null error: the spec allows it
    with pytest.raises(ProtocolError, match=r"schema ack\.json"):
        validate("ack", good)
    with pytest.raises(ProtocolError, match=r"schema heartbeat\.json at uptime_s"):
        validate("heartbeat", b'{"schema":2,"type":"heartbeat","uptime_s":"1.5"}')
    # what a schema cannot state is still the codec's: an integer written with a fraction
    with pytest.raises(ProtocolError):
        validate("heartbeat", b'{"schema":2.0,"type":"heartbeat","uptime_s":1.5}')


def test_transfer_tampers_only_the_first_delivery_and_describes_its_chunks() -> None:
    # Prepare
    data = bytes(range(256)) * 40  # 10240 bytes: chunks of 4096, 4096, 2048
    transfer = Transfer(data, 4096, tamper={1})
    # Execute
    ref = transfer.ref()
    # Assert
    assert transfer.chunks == 3 and ref.chunks == 3
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.chunk_sha256[2] == hashlib.sha256(data[8192:]).hexdigest()
    proto.check_message(proto.Command(command_id="c", action="install", artifact=ref))


def _results() -> list[Result]:
    return [
        Result("install", "PASS", "installed", 1.0, "an ack"),
        Result("downgrade-refused", "FAIL", "the device installed it", 0.5, "an ack"),
        Result("signed-rollback-accepted", "SKIP", "needs install", 0.0, "an ack"),
    ]


def test_reports_say_which_check_failed(tmp_path: Path) -> None:
    # Execute
    write_report(tmp_path / "r.json", _results(), device_id="dev-1")
    write_report(tmp_path / "r.xml", _results(), device_id="dev-1")
    # Assert
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["conforms"] is False
    assert [c["outcome"] for c in document["checks"]] == ["PASS", "FAIL", "SKIP"]
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='downgrade-refused']/failure")
    assert failure is not None and failure.get("message") == "the device installed it"
    assert summary(_results()) == "DOES NOT CONFORM: 1 passed, 1 failed, 1 skipped"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--only", "nope"], "--only: unknown checks ['nope']"),
        (["--broker", "localhost"], "--broker 'localhost' must be HOST:PORT"),
        (["--broker", "127.0.0.1:1883"], "with --broker, give --fleet-password-file"),
        (["--timeout", "0"], "--timeout must be positive seconds"),
        (["--device-id", "a/b"], "device id 'a/b' must be 1-64 letters"),
        (["--agent-cmd", ""], "--agent-cmd is empty"),
        (["--target", "rpi4"], "--target rpi4 runs tflite models; the kit's test bundles are ONNX"),
        (["--target", "nope"], "unknown target 'nope'; choose one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    # Execute
    result = CliRunner().invoke(
        build_app(),
        ["device", "conformance", "--work", str(tmp_path / "kit"), "--agent-cmd", "true", *args],
    )
    # Assert
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert result.output.count("\n") == 1, result.output
    assert not (tmp_path / "kit").exists(), "bad input must leave nothing behind"


def test_an_agent_started_elsewhere_needs_the_folder_and_a_fixed_port(tmp_path: Path) -> None:
    # Execute
    no_work = CliRunner().invoke(build_app(), ["device", "conformance"])
    no_port = CliRunner().invoke(
        build_app(), ["device", "conformance", "--work", str(tmp_path / "kit")]
    )
    # Assert
    assert no_work.exit_code == 2 and "give --work" in no_work.output
    assert no_port.exit_code == 2 and "needs a fixed broker port: give --port" in no_port.output
    assert not (tmp_path / "kit").exists()


def test_the_kits_bundles_are_what_each_check_needs(tmp_path: Path) -> None:
    # Prepare
    from firmware_images.bundle import verify_bundle
    from firmware_images.errors import WrongKeyError
    from firmware_images.keys import load_public_key
    from fleet.ota.conformance.workspace import build_bundles, prepare

    workspace = prepare(
        tmp_path / "kit", device_id="d-1", target="rpi5", task="t-1", host="127.0.0.1", port=1
    )
    trusted = load_public_key(tmp_path / "kit" / "bundle.pub")
    # Execute
    bundles = build_bundles(workspace)
    # Assert: signed for the device's target and architecture, releases in the order the
    # checks rely on, the resume bundle spans many chunks, one bundle under another key
    for name in ("first", "second", "third", "downgrade"):
        manifest = verify_bundle(bundles[name].data, public_key=trusted, target="rpi5").manifest
        assert (manifest.arch, manifest.task) == ("aarch64", "t-1")
        assert manifest.release == bundles[name].release
        assert manifest.source.model_version == str(bundles[name].model_version_id)
    with pytest.raises(WrongKeyError):
        verify_bundle(bundles["bad-signature"].data, public_key=trusted)
    order = ["downgrade", "first", "second", "third", "bad-signature"]
    assert [bundles[n].release for n in order] == sorted(b.release for b in bundles.values())
    assert len(bundles["second"].data) > 9 * 4096
    assert 'target = "rpi5"' in (tmp_path / "kit" / "device.toml").read_text()


def test_the_kit_holds_an_agents_feedback_to_its_schema() -> None:
    # A vendor's agent that sends feedback (optional) must send it as specified.
    good = b'{"schema":2,"type":"feedback","seq":1,"window_s":60,"model_version_id":7,'
    good += b'"labels":{"0":{"correct":9,"wrong":1}}}'
    assert isinstance(validate("feedback", good), proto.Feedback)
    with pytest.raises(ProtocolError, match="feedback.json"):
        validate("feedback", good.replace(b'"wrong":1', b'"wrong":-1'))
