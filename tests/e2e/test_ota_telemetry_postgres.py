"""Telemetry into PostgreSQL through the real broker and bridge (batches written with
COPY): every message published is stored once, and a batch the database refuses is
written one message at a time, dropping only the refused one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).parent))

from ota_testkit import DeviceClient, OtaFleet, stored_seqs, wait_for

from edge_client.protocol import mqtt as proto
from fleet.models.ota import TelemetryRecord
from fleet.ota.guard import DEFAULT_RATES, Limits, Rate

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEVICES = 10
PER_DEVICE = 150


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OtaFleet]:
    # Each device sends its whole share at once: its telemetry burst allows it.
    rates = {**DEFAULT_RATES, "telemetry": Rate(per_s=1.0, burst=PER_DEVICE + 10)}
    ota = OtaFleet(tmp_path, devices=DEVICES, database=PG_URL, limits=Limits(rates=rates))
    try:
        yield ota.start(agents=False)
    finally:
        ota.close()


def _rows(fleet: OtaFleet) -> list[tuple[str, int]]:
    with Session(fleet.engine) as session:
        found = session.exec(select(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
    return [(d, s) for d, s in found]


def test_every_message_published_is_stored_once_in_postgresql(fleet: OtaFleet) -> None:
    # Prepare
    assert fleet.engine.dialect.name == "postgresql"
    clients = [DeviceClient(fleet, d) for d in fleet.devices]
    expected = {(c.device_id, seq) for c in clients for seq in range(PER_DEVICE)}

    # Execute: every device publishes its share over its own session (QoS 1).
    try:
        for seq in range(PER_DEVICE):
            for client in clients:
                client.telemetry(seq)
        wait_for(lambda: len(_rows(fleet)) >= len(expected), timeout_s=60, what="all rows")
        fleet.bridge.flush()  # type: ignore[union-attr]
    finally:
        for client in clients:
            client.close()

    # Assert: N published, N rows, each (device, seq) exactly once.
    rows = _rows(fleet)
    assert len(rows) == len(expected) == DEVICES * PER_DEVICE
    assert set(rows) == expected


def test_a_batch_postgresql_refuses_is_written_one_message_at_a_time(fleet: OtaFleet) -> None:
    # Prepare: PostgreSQL itself refuses a's telemetry rows (a trigger), in a batch with
    # b's message: the COPY of the batch fails as a whole.
    bridge = fleet.bridge
    assert bridge is not None
    a, b = (d.device_id for d in fleet.devices[:2])
    with fleet.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse_a() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.device_id = '{a}' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
            "RETURN NEW; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse_a BEFORE INSERT ON telemetry_records "
            "FOR EACH ROW EXECUTE FUNCTION refuse_a()"
        )
    message = proto.Telemetry(seq=7, window_s=1.0, count=1, latency_p50_ms=1.0, latency_p95_ms=1.0)
    batch = [("msg", proto.topic(d, "telemetry"), proto.encode(message)) for d in (a, b)]

    # Execute
    bridge.ingest_batch(batch)

    # Assert: b's row stored; a's message dropped and counted as poison, alone.
    assert stored_seqs(fleet, b) == {7} and stored_seqs(fleet, a) == set()
    assert bridge.stats.guard.poison == {a: 1}
