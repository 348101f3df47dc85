"""Issue 14 items 2 and 3 against real processes: a TLS SuperLink (`coordinator up`) and
two sites started with `fedfleet site join` (site-0 does not require DP; site-1 does,
with its own noise multiplier).

* A Flower app the sites never pinned, submitted by the legitimate operator with
  `flwr run`: its ClientApp would write a marker file on import and reply with the
  site's records and private key. Each site refuses it before any of its code runs
  (the marker never appears), audits the refusal, and its ServerApp — the coordinator
  side — receives an error naming the site.
* fedfleet's own ClientApp (the default pin) trains.
* A run with `dp = "central"` at the require-dp site trains with the site's own
  DP-SGD: ledger rows appear, and its replies to the same instruction in two identical
  runs differ, while the other site's are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from silo_testkit import (
    TASK,
    SiloFederation,
    Site,
    free_port,
    site_splits,
    wait_for,
)

from coordinator.certs import create_dev_ca
from coordinator.run_state import RunState
from coordinator.superlink import CONNECTION, flwr_json
from edge_client.protocol.keys import ERR_SITE_CODE_NOT_PINNED
from edge_client.site_cli import app as site_app
from edge_client.site_config import SiteConfig
from privacy.ledger import PrivacyLedger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOISE = 1.3  # site-1's own noise multiplier


def good_result(fed: SiloFederation) -> Path:
    return fed.root / "good-replies.json"


RUN = {
    "task": TASK,
    "sites": 2,
    "min-sites": 2,
    "num-server-rounds": 1,
    "learning-rate": 0.05,
    "batch-size": 16,
    "seed": 11,
    "round-timeout": 240,
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiloFederation]:
    """Two sites; site-1 requires DP with its own noise multiplier."""
    federation = SiloFederation(tmp_path_factory.mktemp("pinning"))
    try:
        create_dev_ca(federation.root / "certs")
        federation.port = free_port()
        federation.coordinator_toml.write_text(
            f'[superlink]\naddress = "127.0.0.1:{federation.port}"\n'
        )
        federation.start_coordinator()
        good = _app(federation.root, "goodapp", GOOD_CLIENT, RESULT=str(good_result(federation)))
        pin = hashlib.sha256(build_fab_from_disk(good)).hexdigest()  # what `flwr run` sends
        for i, (x, y) in enumerate(site_splits()[:2]):
            site = Site(name=f"site-{i}", dir=federation.root / f"site-{i}", port=free_port())
            federation.make_site(site, fmt="csv", x=x, y=y)
            if i == 0:  # site-0 also runs one Flower app, pinned by its FAB's SHA-256
                text = site.config.read_text().replace("fab-sha256 = []", f'fab-sha256 = ["{pin}"]')
                site.config.write_text(text)
            if i == 1:
                text = site.config.read_text().replace("require-dp = false", "require-dp = true")
                text = text.replace("dp-noise-multiplier = 1.0", f"dp-noise-multiplier = {NOISE}")
                site.config.write_text(text)
            federation.sites.append(site)
        threads = [
            threading.Thread(target=federation._register, args=(s,), daemon=True)
            for s in federation.sites
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for site in federation.sites:
            federation.start_site(site)
        yield federation
    finally:
        federation.stop()


PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "{name}.server:app"
clientapp = "{name}.client:app"

[tool.flwr.app.config]
"""

SERVER = """\
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    deadline = time.monotonic() + 120
    nodes = list(grid.get_node_ids())
    while len(nodes) < 2 and time.monotonic() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    messages = [
        Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=n,
                message_type="train")
        for n in nodes
    ]
    out = []
    for reply in grid.send_and_receive(messages, timeout=180):
        row = {"node": reply.metadata.src_node_id}
        if reply.has_error():
            row["code"] = reply.error.code
            row["reason"] = reply.error.reason
        else:
            row["content"] = repr(reply.content)
        out.append(row)
    Path(RESULT).write_text(json.dumps(out))
"""

EVIL_CLIENT = """\
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

Path(MARKER).write_text("the unpinned ClientApp ran")
app = ClientApp()


@app.train()
def steal(msg, context):
    loot = {}
    for folder in SITE_DIRS:
        for path in Path(folder).rglob("*"):
            if path.suffix in (".csv", ".key"):
                loot[path.name] = path.read_bytes()[:256]
    return Message(RecordDict({"loot": ConfigRecord(loot)}), reply_to=msg)
"""

GOOD_CLIENT = """\
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def hello(msg, context):
    return Message(RecordDict({"metrics": MetricRecord({"hello": 1})}), reply_to=msg)
"""


def _app(root: Path, name: str, client: str, **constants: object) -> Path:
    """A Flower app ``name`` whose ServerApp sends one train message to every node and
    writes the replies (errors or content) to ``constants["RESULT"]``."""
    app = root / name
    (app / name).mkdir(parents=True)
    (app / name / "__init__.py").write_text("")
    (app / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    header = "".join(f"{key} = {value!r}\n" for key, value in constants.items())
    (app / name / "client.py").write_text(header + client)
    (app / name / "server.py").write_text(header + SERVER)
    return app


def _replies(result: Path) -> list[dict[str, object]]:
    wait_for(result.exists, timeout=400, what="the ServerApp's replies")
    return list(json.loads(result.read_text()))


def test_an_unpinned_app_is_refused_before_its_code_runs(
    fed: SiloFederation, tmp_path: Path
) -> None:
    # Prepare: the operator's own `flwr run` of an app no site pinned
    marker, result = tmp_path / "marker", tmp_path / "replies.json"
    app = _app(
        tmp_path,
        "evilapp",
        EVIL_CLIENT,
        MARKER=str(marker),
        RESULT=str(result),
        SITE_DIRS=[str(s.dir) for s in fed.sites],
    )
    audits_before = {s.name: len(list(s.audit_log().entries())) for s in fed.sites}
    # Execute
    flwr_json(fed.settings, ["run", str(app), CONNECTION], timeout=300)
    replies = _replies(result)
    # Assert: the coordinator side got one error per site, naming the site and why
    assert len(replies) == 2, replies
    assert all("content" not in r for r in replies), replies
    assert all(r["code"] == ERR_SITE_CODE_NOT_PINNED for r in replies)
    reasons = sorted(str(r["reason"]) for r in replies)
    for site, reason in zip(fed.sites, reasons, strict=True):
        assert f"site {site.name} runs only code it pinned" in reason
        assert "'evilapp.client:app'" in reason
    # nothing of the app ran at any site
    assert not marker.exists()
    # each site's audit log records the refusal (with the FAB's hash) and verifies
    for site in fed.sites:
        entries = list(site.audit_log().entries())[audits_before[site.name] :]
        (refusal,) = [e for e in entries if e["kind"] == "refusal"]
        assert refusal["clientapp"] == "evilapp.client:app"
        assert len(refusal["fab-sha256"]) == 64 and f"site {site.name}" in refusal["reason"]
        verified = CliRunner().invoke(site_app, ["audit", "--config", str(site.config), "--verify"])
        assert verified.exit_code == 0 and "ok:" in verified.output, verified.output


def test_a_hash_pinned_app_runs_only_where_it_is_pinned(fed: SiloFederation) -> None:
    # Execute
    flwr_json(fed.settings, ["run", str(fed.root / "goodapp"), CONNECTION], timeout=300)
    replies = _replies(good_result(fed))
    # Assert: site-0 (pinned) ran it through Flower's flwr-clientapp; site-1 refused it
    assert len(replies) == 2, replies
    (answered,) = [r for r in replies if "content" in r]
    (refused,) = [r for r in replies if "code" in r]
    assert "'hello': 1" in str(answered["content"])
    assert refused["code"] == ERR_SITE_CODE_NOT_PINNED
    assert "site site-1 runs only code it pinned" in str(refused["reason"])
    pin = next(iter(SiteConfig.load(fed.sites[0].config).code.fab_sha256))
    launched = [e for e in fed.sites[0].audit_log().entries() if e["kind"] == "pinned-app"]
    assert [e["fab-sha256"] for e in launched] == [pin]


def _round_one_reply_sha(site: Site, run_ids: set[int]) -> list[str]:
    return [
        e["sha256"]
        for e in site.audit_log().entries()
        if e["kind"] == "reply" and e["type"] == "train" and e["run"] in run_ids
    ]


def test_the_default_pin_trains_and_a_require_dp_site_uses_its_own_dp(
    fed: SiloFederation,
) -> None:
    """fedfleet's own ClientApp runs; with dp = "central" the require-dp site still
    trains with its own DP-SGD (ledger rows; its replies to one instruction differ)."""
    run = {**RUN, "dp": "central", "dp-noise-multiplier": 0.5}
    flower_runs: list[set[int]] = []
    for _ in range(2):  # two identical runs: the same round-1 instruction
        state = fed.submit(run)
        fed.wait_finished(state, timeout=600)
        rounds = state.rounds()
        assert rounds and rounds[0]["clients"] == 2 and rounds[0]["applied"], rounds
        saved = RunState.load(fed.settings.state_dir, state.run_id)
        flower_runs.append(set(saved.flower_runs))
    plain, private = fed.sites
    # the site without a DP requirement answers the same instruction bit-identically
    first, second = (_round_one_reply_sha(plain, ids) for ids in flower_runs)
    assert len(first) == len(second) == 1 and first == second
    # the require-dp site trained with its own DP-SGD: charged, noisy, different replies
    a, b = (_round_one_reply_sha(private, ids) for ids in flower_runs)
    assert len(a) == len(b) == 1 and a != b
    config = SiteConfig.load(private.config)
    ledger = PrivacyLedger.in_state_dir(config.state_dir, site=config.name)
    rows = [e for e in ledger.entries(task=TASK) if int(e.run_id) in set().union(*flower_runs)]
    assert len(rows) == 2 and all(e.status == "completed" for e in rows)
    assert all(e.noise_multiplier == NOISE for e in rows)
    epsilons = [
        e["epsilon"]
        for e in private.audit_log().entries()
        if e["kind"] == "reply" and e["run"] in set().union(*flower_runs)
    ]
    assert epsilons and all(eps is not None and eps > 0 for eps in epsilons)
