"""The named checks of the conformance kit, in the order they run.

Each check drives the device through :class:`~fleet.ota.conformance.fleet_side.FleetSide`
and either returns a one-line detail (PASS) or raises ``CheckFailed`` with the reason
(FAIL). Every wait is bounded by the run's timeout and says what it waited for. A check
whose prerequisite (``needs``) did not pass is skipped. The device's state carries from
one check to the next (the installs build its slots and its floor), so the order matters;
``docs/conformance.md`` lists what each check expects, with the protocol's section.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.protocol import mqtt as proto
from fleet.ota.conformance.fleet_side import CheckFailed, FleetSide, Transfer
from fleet.ota.conformance.workspace import TestBundle

CHUNK_SIZE = 4096  # small chunks: every test bundle is several chunks
FEATURES = 8  # inputs of the kit's test models (firmware_images.demo)


@dataclass
class Context:
    """What the checks share: the fleet's session, the bundles, the device's state."""

    fleet: FleetSide
    bundles: dict[str, TestBundle]
    target: str
    device_password: str
    timeout_s: float
    installed: list[TestBundle] = field(default_factory=list)  # in install order
    running: TestBundle | None = None
    first_ping: bytes = b""  # a signed command the device accepted early (replayed later)
    first_ping_id: str = ""
    _ids: int = 0

    def command_id(self, what: str) -> str:
        self._ids += 1
        return f"conf-{what}-{self._ids}-{time.time_ns() % 10**9}"

    def expect(self, condition: bool, reason: str) -> None:
        if not condition:
            raise CheckFailed(reason)

    def ack(self, command_id: str, *, since: float, what: str) -> proto.Ack:
        ack: proto.Ack = self.fleet.wait_for(
            lambda: self.fleet.ack_for(command_id, since=since),
            timeout_s=self.timeout_s,
            what=f"the ack of {what} (command_id {command_id})",
        )
        return ack

    def status(self, *, since: float, what: str) -> proto.Status:
        status: proto.Status = self.fleet.wait_for(
            lambda: self.fleet.last_status(since=since),
            timeout_s=self.timeout_s,
            what=what,
        )
        return status

    def status_naming(self, bundle: TestBundle, *, since: float, what: str) -> proto.Status:
        """Wait for a status since ``since`` naming ``bundle``; the failure names the
        last status seen instead."""

        def naming() -> proto.Status | None:
            found = self.fleet.messages(proto.Status, since=since)
            return next((s for s in found if s.online and s.sha256 == bundle.sha), None)

        try:
            status: proto.Status = self.fleet.wait_for(
                naming, timeout_s=self.timeout_s, what=f"a status naming {what}"
            )
        except CheckFailed:
            last = self.fleet.last_status(since=since)
            if last is None:
                raise
            raise CheckFailed(
                f"status reports sha256 {last.sha256} (online={last.online}); expected "
                f"{bundle.sha} ({what})"
            ) from None
        self.expect(
            status.model_version_id == bundle.model_version_id,
            f"status.model_version_id is {status.model_version_id}, expected "
            f"{bundle.model_version_id}",
        )
        return status

    def unchanged(self, since: float) -> None:
        """The device still runs what it ran (no status naming another bundle since)."""
        running = self.running
        for status in self.fleet.messages(proto.Status, since=since):
            if status.online and running is not None and status.sha256 != running.sha:
                raise CheckFailed(
                    f"the device now reports bundle {status.sha256} instead of "
                    f"{running.sha} (it acted on what it had to refuse)"
                )


@dataclass(frozen=True)
class Check:
    """One named check: what it waits for, what it needs first, and its body."""

    name: str
    waits_for: str
    needs: tuple[str, ...]
    body: Callable[[Context], str]


# --- session ------------------------------------------------------------------------


def status_online(ctx: Context) -> str:
    status = ctx.status(since=0.0, what="a retained status message with online=true")
    if not status.online:
        status = ctx.fleet.wait_for(
            lambda: (s := ctx.fleet.last_status()) is not None and s.online and s,
            timeout_s=ctx.timeout_s,
            what="a status message with online=true",
        )
    ctx.expect(
        status.target == ctx.target,
        f"status.target is {status.target!r}; the device's target is {ctx.target!r}",
    )
    ctx.expect(
        status.sha256 is None and status.model_version_id is None,
        "a fresh device (empty state) must report sha256 and model_version_id null, "
        f"got {status.sha256!r} and {status.model_version_id!r}",
    )
    return f"online, target {status.target}, agent {status.agent!r}, no model yet"


def heartbeat(ctx: Context) -> str:
    since = time.monotonic()
    beats = ctx.fleet.wait_for(
        lambda: len(b := ctx.fleet.messages(proto.Heartbeat, since=since)) >= 2 and b,
        timeout_s=ctx.timeout_s,
        what="two heartbeats",
    )
    ctx.expect(
        beats[1].uptime_s >= beats[0].uptime_s,
        f"uptime_s went backwards: {beats[0].uptime_s} then {beats[1].uptime_s}",
    )
    ctx.expect(
        all(b.model_version_id is None for b in beats),
        "a device with no model must send heartbeat.model_version_id null",
    )
    gap = beats[1].uptime_s - beats[0].uptime_s
    return f"two heartbeats {gap:.2f} s apart (uptime_s), model_version_id null"


def ping(ctx: Context) -> str:
    since = time.monotonic()
    sent = ctx.fleet.send(proto.Command(command_id=ctx.command_id("ping"), action="ping"))
    ack = ctx.ack(sent.command_id, since=since, what="a signed ping")
    ctx.expect(ack.ok and ack.stage == "", f"a signed ping must ack ok, stage '': got {ack}")
    ctx.expect(ack.action == "ping", f"ack.action is {ack.action!r}, expected 'ping'")
    ctx.first_ping, ctx.first_ping_id = ctx.fleet.sent[sent.command_id], sent.command_id
    return "acked ok, stage ''"


# --- installs -----------------------------------------------------------------------


def _install(
    ctx: Context, bundle: TestBundle, transfer: Transfer, command_id: str, since: float
) -> str:
    ack = ctx.ack(command_id, since=since, what=f"install {bundle.name}")
    ctx.expect(
        ack.ok and ack.stage == "installed",
        f"install of a valid bundle acked ok={ack.ok} stage={ack.stage!r}: {ack.error}",
    )
    ctx.expect(
        ack.model_version_id == bundle.model_version_id,
        f"ack.model_version_id is {ack.model_version_id}; the signed manifest names "
        f"{bundle.model_version_id}",
    )
    status = ctx.status_naming(bundle, since=since, what=f"the installed bundle {bundle.name}")
    missing = set(range(transfer.chunks)) - set(transfer.delivered)
    ctx.expect(not missing, f"installed without chunks {sorted(missing)} (never requested)")
    ctx.installed.append(bundle)
    ctx.running = bundle
    return (
        f"{transfer.chunks} chunks in {len(transfer.requests)} requests, acked 'installed', "
        f"status reports model_version_id {status.model_version_id}"
    )


def install(ctx: Context) -> str:
    bundle = ctx.bundles["first"]
    transfer = Transfer(bundle.data, CHUNK_SIZE)
    since = time.monotonic()
    sent = ctx.fleet.install(transfer, command_id=ctx.command_id("install"), model_version_id=101)
    detail = _install(ctx, bundle, transfer, sent, since)
    beat = ctx.fleet.wait_for(
        lambda: (
            [b for b in ctx.fleet.messages(proto.Heartbeat, since=since) if b.model_version_id]
            or None
        ),
        timeout_s=ctx.timeout_s,
        what="a heartbeat naming the installed model_version_id",
    )[-1]
    ctx.expect(
        beat.model_version_id == bundle.model_version_id,
        f"heartbeat.model_version_id is {beat.model_version_id}",
    )
    return detail


def resume(ctx: Context) -> str:
    bundle = ctx.bundles["second"]
    transfer = Transfer(bundle.data, CHUNK_SIZE, hold_after=3)
    ctx.expect(transfer.chunks > 4, "the kit's resume bundle is too small")  # kit's own bug
    since = time.monotonic()
    sent = ctx.fleet.install(transfer, command_id=ctx.command_id("resume"), model_version_id=102)
    ctx.fleet.wait_for(
        lambda: len(transfer.delivered) >= 3,
        timeout_s=ctx.timeout_s,
        what="requests for the first 3 chunks",
    )
    ctx.fleet.pause(0.3)  # the transfer stalls: the agent waits for chunks it asked for
    before = set(transfer.delivered)
    kicked = time.monotonic()
    ctx.fleet.kick_device(ctx.device_password, timeout_s=ctx.timeout_s)
    ctx.fleet.wait_for(
        lambda: any(s.online for s in ctx.fleet.messages(proto.Status, since=kicked)),
        timeout_s=ctx.timeout_s,
        what="the agent to reconnect and publish status online=true after its "
        "connection was closed",
    )
    back = time.monotonic()
    transfer.release()
    detail = _install(ctx, bundle, transfer, sent, since)
    again = sorted(transfer.requested_since(back) & before)
    ctx.expect(
        not again,
        f"after reconnecting the agent asked again for chunks {again} it had received "
        "(it restarted the transfer instead of resuming it)",
    )
    return f"resumed after a disconnect with {len(before)} chunks kept; {detail}"


def tampered_chunk(ctx: Context) -> str:
    bundle = ctx.bundles["third"]
    transfer = Transfer(bundle.data, CHUNK_SIZE, tamper={1})
    since = time.monotonic()
    sent = ctx.fleet.install(transfer, command_id=ctx.command_id("tamper"), model_version_id=103)
    ack = ctx.ack(sent, since=since, what="the install with a tampered chunk")
    ctx.expect(
        ack.ok,
        f"the agent took the tampered chunk 1 (install acked ok=false at {ack.stage!r}: "
        f"{ack.error}); it must check each chunk's SHA-256 and ask for it again",
    )
    asked = sum(1 for indices, _v, _t in transfer.requests for i in indices if i == 1)
    ctx.expect(asked >= 2, "chunk 1 was tampered but never requested again")
    return _install(ctx, bundle, transfer, sent, since) + "; tampered chunk 1 refused and refetched"


def _refused_install(ctx: Context, name: str, stage: str, why: str) -> str:
    bundle = ctx.bundles[name]
    transfer = Transfer(bundle.data, CHUNK_SIZE)
    since = time.monotonic()
    sent = ctx.fleet.install(
        transfer, command_id=ctx.command_id(name), model_version_id=bundle.model_version_id
    )
    ack = ctx.ack(sent, since=since, what=f"the install of {why}")
    ctx.expect(not ack.ok, f"the device installed {why} (acked ok, stage {ack.stage!r})")
    ctx.expect(
        ack.stage == stage,
        f"refused at stage {ack.stage!r}; the protocol names {stage!r} for {why}",
    )
    ctx.expect(bool(ack.error), "a refusal must say why in ack.error")
    running = ctx.running
    ctx.expect(
        running is not None and ack.model_version_id == running.model_version_id,
        f"ack.model_version_id is {ack.model_version_id}; the device should still run "
        f"{running.model_version_id if running else None}",
    )
    ctx.fleet.pause(0.3)
    ctx.unchanged(since)
    return f"refused at stage {stage!r}: {ack.error[:100]}"


def bad_signature(ctx: Context) -> str:
    return _refused_install(ctx, "bad-signature", "verify", "a bundle signed by an unknown key")


def downgrade(ctx: Context) -> str:
    return _refused_install(ctx, "downgrade", "floor", "a validly signed older release")


def replayed_bundle(ctx: Context) -> str:
    return _refused_install(ctx, "first", "floor", "the first bundle again (a replayed release)")


# --- commands -----------------------------------------------------------------------


def _refused_command(ctx: Context, command_id: str, since: float, what: str) -> str:
    ack = ctx.ack(command_id, since=since, what=what)
    ctx.expect(not ack.ok, f"the device obeyed {what} (acked ok, stage {ack.stage!r})")
    ctx.expect(ack.stage == "auth", f"refused at stage {ack.stage!r}; expected 'auth'")
    ctx.fleet.pause(0.3)
    ctx.unchanged(since)
    return f"refused at stage 'auth': {ack.error[:100]}"


def replayed_command(ctx: Context) -> str:
    since = time.monotonic()
    ctx.fleet.publish_raw(ctx.first_ping_id, ctx.first_ping)
    return _refused_command(ctx, ctx.first_ping_id, since, "an earlier signed ping replayed")


def forged_command(ctx: Context) -> str:
    since = time.monotonic()
    sent = ctx.fleet.send_forged(
        proto.Command(command_id=ctx.command_id("forged"), action="rollback"),
        Ed25519PrivateKey.generate(),
    )
    return _refused_command(ctx, sent.command_id, since, "a rollback signed by another key")


def unsigned_rollback(ctx: Context) -> str:
    since = time.monotonic()
    sent = ctx.fleet.send(
        proto.Command(command_id=ctx.command_id("unsigned-rollback"), action="rollback"),
        sign=False,
    )
    return _refused_command(ctx, sent.command_id, since, "an unsigned rollback")


def signed_rollback(ctx: Context) -> str:
    ctx.expect(len(ctx.installed) >= 2, "needs two installs (a previous slot)")
    previous = ctx.installed[-2]
    since = time.monotonic()
    sent = ctx.fleet.send(proto.Command(command_id=ctx.command_id("rollback"), action="rollback"))
    ack = ctx.ack(sent.command_id, since=since, what="a signed rollback")
    ctx.expect(
        ack.ok and ack.stage == "rolled-back",
        f"a signed rollback acked ok={ack.ok} stage={ack.stage!r}: {ack.error}",
    )
    ctx.status_naming(previous, since=since, what=f"the previous slot's bundle {previous.name}")
    ctx.expect(
        ack.model_version_id == previous.model_version_id,
        f"ack.model_version_id is {ack.model_version_id}, expected {previous.model_version_id}",
    )
    ctx.running = previous
    return f"back on the previous slot ({previous.name}, model_version_id {ack.model_version_id})"


# --- telemetry and drift ------------------------------------------------------------


def telemetry(ctx: Context) -> str:
    since = time.monotonic()
    found = ctx.fleet.wait_for(
        lambda: ctx.fleet.messages(proto.Telemetry, since=since),
        timeout_s=ctx.timeout_s,
        what="a telemetry message (every telemetry_s)",
    )
    last = found[-1]
    every = ctx.fleet.messages(proto.Telemetry)
    seqs = [t.seq for t in every]
    ctx.expect(
        all(b > a for a, b in itertools.pairwise(seqs)),
        f"telemetry seq must increase: {seqs}",
    )
    ctx.expect(
        last.latency_p50_ms <= last.latency_p95_ms,
        f"latency_p50_ms {last.latency_p50_ms} above latency_p95_ms {last.latency_p95_ms}",
    )
    running = ctx.running
    expected = running.model_version_id if running else None
    ctx.expect(
        last.model_version_id == expected,
        f"telemetry.model_version_id is {last.model_version_id}; the device runs {expected}",
    )
    return f"{len(every)} messages, seq {seqs[0]}..{seqs[-1]}, window {last.window_s:g} s"


def drift_reference(ctx: Context) -> str:
    running = ctx.running
    ctx.expect(running is not None, "needs an installed model")
    assert running is not None  # noqa: S101 - for mypy; checked above
    bins = tuple((-0.5, 0.0, 0.5) for _ in range(FEATURES))
    since = time.monotonic()
    other = ctx.fleet.send(
        proto.Command(
            command_id=ctx.command_id("bins-other"),
            action="ping",
            model_version_id=running.model_version_id + 1000,
            telemetry_bins=bins,
        )
    )
    ack = ctx.ack(other.command_id, since=since, what="a ping with bins for another version")
    ctx.expect(
        ack.ok and ack.stage == "bins-ignored",
        f"bins for a version the device does not run must ack ok, stage 'bins-ignored'; "
        f"got ok={ack.ok} stage={ack.stage!r}",
    )
    sent = ctx.fleet.send(
        proto.Command(
            command_id=ctx.command_id("bins"),
            action="ping",
            model_version_id=running.model_version_id,
            telemetry_bins=bins,
        )
    )
    ack = ctx.ack(sent.command_id, since=since, what="a ping carrying a new drift reference")
    ctx.expect(
        ack.ok and ack.stage == "bins-updated",
        f"a reference for the running version must ack ok, stage 'bins-updated'; got "
        f"ok={ack.ok} stage={ack.stage!r}",
    )
    adopted = time.monotonic()
    found = ctx.fleet.wait_for(
        lambda: ctx.fleet.messages(proto.Telemetry, since=adopted),
        timeout_s=ctx.timeout_s,
        what="a telemetry message after the new reference",
    )
    shape = [len(f.counts) for f in found[0].features]
    ctx.expect(
        shape == [len(edges) + 1 for edges in bins],
        f"telemetry.features after the reference has bin counts {shape}; expected "
        f"{FEATURES} features of {len(bins[0]) + 1} bins (edges + 1)",
    )
    return f"bins adopted: telemetry reports {FEATURES} features x {shape[0]} bins"


def messages_valid(ctx: Context) -> str:
    bad = [s for s in ctx.fleet.seen if s.error is not None]
    ctx.expect(
        not bad,
        f"{len(bad)} message(s) broke the contract; first on {bad[0].channel}: {bad[0].error}"
        if bad
        else "",
    )
    unknown = ctx.fleet.unknown_requests
    ctx.expect(not unknown, f"chunk requests for transfers never offered: {unknown[:3]}")
    counts: dict[str, int] = {}
    for s in ctx.fleet.seen:
        counts[s.channel] = counts.get(s.channel, 0) + 1
    return "all valid: " + ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))


CHECKS: tuple[Check, ...] = (
    Check("status-online", "a retained status online=true", (), status_online),
    Check("heartbeat", "two heartbeats", (), heartbeat),
    Check("ping", "the ack of a signed ping", ("status-online",), ping),
    Check("install", "chunk requests, the install ack, a status", ("status-online",), install),
    Check("resume-after-disconnect", "a reconnect, then the install ack", ("install",), resume),
    Check(
        "tampered-chunk-refused", "a re-request of the tampered chunk", ("install",), tampered_chunk
    ),
    Check("bad-signature-refused", "an ack ok=false stage=verify", ("install",), bad_signature),
    Check("downgrade-refused", "an ack ok=false stage=floor", ("install",), downgrade),
    Check(
        "replayed-bundle-refused",
        "an ack ok=false stage=floor",
        ("resume-after-disconnect",),
        replayed_bundle,
    ),
    Check(
        "replayed-command-refused",
        "an ack ok=false stage=auth",
        ("ping", "install"),
        replayed_command,
    ),
    Check("forged-command-refused", "an ack ok=false stage=auth", ("install",), forged_command),
    Check(
        "unsigned-rollback-refused",
        "an ack ok=false stage=auth",
        ("resume-after-disconnect",),
        unsigned_rollback,
    ),
    Check(
        "signed-rollback-accepted",
        "an ack stage=rolled-back and a status of the previous slot",
        ("resume-after-disconnect",),
        signed_rollback,
    ),
    Check("telemetry", "a telemetry message", ("status-online",), telemetry),
    Check(
        "drift-reference-applied",
        "bins acks and a telemetry message",
        ("install",),
        drift_reference,
    ),
    Check("messages-valid", "nothing (reviews every message received)", (), messages_valid),
)
NAMES = tuple(c.name for c in CHECKS)


def select(only: list[str] | None) -> tuple[Check, ...]:
    """The checks to run: ``only`` and what they need (all when None); ValueError names
    an unknown check."""
    if not only:
        return CHECKS
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise ValueError(f"--only: unknown checks {unknown}; choose from {', '.join(NAMES)}")
    by_name = {c.name: c for c in CHECKS}
    wanted: set[str] = set()
    todo = list(only)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].needs)
    return tuple(c for c in CHECKS if c.name in wanted)
