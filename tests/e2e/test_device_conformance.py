"""``fedfleet device conformance`` against real agents over real Mosquitto.

The kit starts its own Mosquitto (``fleet broker-config``'s files) and the agent:
fedfleet's own (``fedfleet device run``) must pass every check; an agent with one
deliberate flaw (tests/e2e/nonconforming_agent.py) must make the kit FAIL exactly the
check that flaw breaks, and exit 1; SIGINT stops the kit, its broker and the agent.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from silo_testkit import FEDFLEET, descendants, free_port

from fleet.ota.conformance.checks import NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

MOSQUITTO = "/usr/sbin/mosquitto"
OWN_AGENT = f"{shlex.quote(sys.executable)} -m edge_client.device_cli run --config {{config}}"
BROKEN = Path(__file__).parent / "nonconforming_agent.py"


def _flawed(flaw: str) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(BROKEN))} --config {{config}} --flaw {flaw}"


def _kit(
    tmp_path: Path, agent_cmd: str, *extra: str, report_name: str = "report.json"
) -> tuple[int, str, dict]:
    """Run the kit; its exit code, output and JSON report ({} for an XML one)."""
    report = tmp_path / report_name
    done = subprocess.run(
        [
            FEDFLEET,
            "device",
            "conformance",
            "--agent-cmd",
            agent_cmd,
            "--work",
            str(tmp_path / "kit"),
            "--mosquitto",
            MOSQUITTO,
            "--timeout",
            "15",
            "--report",
            str(report),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    output = done.stdout + done.stderr
    document = json.loads(report.read_text()) if report.suffix == ".json" else {}
    return done.returncode, output, document


def _outcomes(document: dict) -> dict[str, tuple[str, str]]:
    return {c["name"]: (c["outcome"], c["detail"]) for c in document.get("checks", [])}


@pytest.fixture(autouse=True)
def _needs_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")


def test_fedfleet_agent_passes_every_check(tmp_path: Path) -> None:
    # Execute
    began = time.monotonic()
    code, output, _ = _kit(tmp_path, OWN_AGENT, report_name="report.xml")
    took = time.monotonic() - began
    # Assert: every named check ran and passed, one PASS line each, in order
    assert code == 0, output
    passed = [line.split()[1] for line in output.splitlines() if line.startswith("PASS  ")]
    assert passed == list(NAMES), output
    assert f"CONFORMS: {len(NAMES)} passed, 0 failed, 0 skipped" in output
    suite = ET.parse(tmp_path / "report.xml").getroot()  # the JUnit report says the same
    assert [c.get("name") for c in suite.iter("testcase")] == list(NAMES)
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "0")
    assert took < 60, f"a whole run should take seconds, took {took:.0f} s"


@pytest.mark.parametrize(
    ("flaw", "check", "says"),
    [
        ("unsigned-rollback", "unsigned-rollback-refused", "obeyed an unsigned rollback"),
        ("downgrade", "downgrade-refused", "installed a validly signed older release"),
        ("replay", "replayed-command-refused", "obeyed an earlier signed ping replayed"),
    ],
)
def test_a_flawed_agent_fails_the_right_check(
    tmp_path: Path, flaw: str, check: str, says: str
) -> None:
    # Execute: only that check and what it needs (status, installs)
    code, output, document = _kit(tmp_path, _flawed(flaw), "--only", check)
    # Assert
    outcomes = _outcomes(document)
    assert code == 1, output
    assert outcomes[check][0] == "FAIL", output
    assert says in outcomes[check][1], output
    assert f"FAIL  {check}" in output
    assert all(o == "PASS" for name, (o, _) in outcomes.items() if name != check), output
    assert "DOES NOT CONFORM" in output


def test_sigint_stops_the_kit_its_broker_and_the_agent(tmp_path: Path) -> None:
    # Prepare: a kit run with the real agent, interrupted once its first check passed
    log = tmp_path / "kit.log"
    with log.open("wb") as handle:
        kit = subprocess.Popen(
            [
                FEDFLEET,
                "device",
                "conformance",
                "--agent-cmd",
                OWN_AGENT,
                "--work",
                str(tmp_path / "kit"),
                "--mosquitto",
                MOSQUITTO,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "PASS  status-online" not in log.read_text():
            assert kit.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        tree = descendants(kit.pid)
        assert len(tree) >= 2, "the kit should run its broker and the agent"
        # Execute
        kit.send_signal(signal.SIGINT)
        code = kit.wait(timeout=20)
        # Assert: stopped, said so once, and nothing it started is left
        output = log.read_text()
        assert code == 130, output
        assert output.count("device conformance: stopped (SIGINT)") == 1, output
        assert "Traceback" not in output, output
        time.sleep(0.5)
        left = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
        assert not left, (left, output)
    finally:
        if kit.poll() is None:
            kit.kill()
            kit.wait()


def test_an_agent_the_vendor_starts_itself(tmp_path: Path) -> None:
    # Prepare: the kit writes keys and device.toml; the "vendor" starts its agent with them
    kit_dir, port = tmp_path / "kit", free_port()
    base = [FEDFLEET, "device", "conformance", "--work", str(kit_dir), "--port", str(port)]
    prepared = subprocess.run(
        [*base, "--prepare"], capture_output=True, text=True, timeout=60, check=False
    )
    assert prepared.returncode == 0, prepared.stderr
    assert f"wrote {kit_dir / 'device.toml'}" in prepared.stdout
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [FEDFLEET, "device", "run", "--config", str(kit_dir / "device.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Execute: the kit's broker comes up on that port; the agent connects on its own
        done = subprocess.run(
            [*base, "--mosquitto", MOSQUITTO, "--timeout", "20", "--only", "install"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # Assert: the checks passed, and the kit left the agent it did not start running
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PASS  install" in done.stdout
        assert agent.poll() is None, "the kit must not stop an agent it did not start"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)


@pytest.mark.parametrize(
    ("agent", "says"),
    [
        ("sleep 60", "timed out after 1 s waiting for a retained status message with online=true"),
        ("sh -c 'exit 3'", "the agent exited with code 3 (see "),
    ],
)
def test_a_silent_or_dead_agent_fails_in_bounded_time(
    tmp_path: Path, agent: str, says: str
) -> None:
    # Execute
    began = time.monotonic()
    code, output, document = _kit(tmp_path, agent, "--timeout", "1", "--only", "ping")
    # Assert: the first check says what it waited for, the next is skipped, the kit ends
    outcomes = _outcomes(document)
    assert code == 1, output
    assert outcomes["status-online"][0] == "FAIL", output
    assert says in outcomes["status-online"][1], output
    assert outcomes["ping"] == ("SKIP", "needs status-online")
    assert time.monotonic() - began < 30, output
