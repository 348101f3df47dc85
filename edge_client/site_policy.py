"""The site's guard around the ClientApp: policy before, audit after.

``site_mod`` is a Flower client mod. When the SuperNode's node config names a site
config (``site-config``), it

1. checks the site policy *before* any training: the run's task must be on the site's
   allowlist; if the site requires differential privacy the run must enable it; a DP
   run is refused once the task's ε budget is used up. A refusal is an
   error reply (``MOD_FAILED_PRECONDITION``) whose reason the coordinator records;
2. appends every reply that leaves the site — result, refusal or error — to the site's
   hash-chained audit log (run, round, message type, payload size and SHA-256, DP
   parameters, ε of this reply and in total), and logs one line per message.

Without a ``site-config`` (a simulated client) the mod passes the message through.
ε spent comes from the site's privacy ledger (``privacy.ledger``), which also reserves
each DP training's ε; this mod refuses up front once the budget is used up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from edge_client.audit import AuditLog
from edge_client.protocol import keys as k
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import LEDGER_FILE, SiteConfig
from privacy.dp.config import RC_DP

log = logging.getLogger(__name__)

REFUSAL_PREFIX = "site policy refused: "
_DP_OFF = ("", "off", "none", "false", "0")


def dp_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's DP parameters (every ``dp``/``dp-*`` key), as recorded in the audit log."""
    return {
        key: value
        for key, value in sorted(run_config.items())
        if key == RC_DP or key.startswith(RC_DP + "-")
    }


def dp_enabled(run_config: Mapping[str, Any]) -> bool:
    """Whether the run trains with differential privacy (run-config key ``dp``)."""
    value = run_config.get(RC_DP, "")
    return str(value).strip().lower() not in _DP_OFF


def epsilon_spent(config: SiteConfig, task: str) -> float:
    """ε the site has spent on ``task`` (at its policy δ), from its privacy ledger."""
    if not (config.state_dir / LEDGER_FILE).exists():
        return 0.0
    from privacy.ledger import PrivacyLedger  # the DP feature's ledger (issue 4)

    ledger = PrivacyLedger.in_state_dir(config.state_dir, site=config.name)
    return ledger.spent(task=task, delta=config.policy.delta)


def check_policy(
    config: SiteConfig, run_config: Mapping[str, Any], spent: float, *, training: bool = True
) -> str | None:
    """The reason to refuse this run's instruction, or None if the site agrees.

    Every instruction must be for an allowed task; ``training`` ones also must use DP
    if the site requires it and fit the remaining budget.
    """
    task = str(run_config.get(k.RC_TASK, ""))
    policy = config.policy
    if task not in policy.allowed_tasks:
        return (
            f"task {task!r} is not on site {config.name}'s allowlist "
            f"({', '.join(policy.allowed_tasks) or 'empty'})"
        )
    if not training:
        return None
    if policy.require_dp and not dp_enabled(run_config):
        return f"site {config.name} requires differential privacy and the run has dp off"
    if dp_enabled(run_config) and spent >= policy.epsilon:
        # the per-round check is the ledger's (it reserves each training's ε)
        return (
            f"privacy budget of site {config.name} is used up for task {task!r}: "
            f"spent ε={spent:.3g} of ε={policy.epsilon:.3g}"
        )
    return None


def payload_digest(message: Message) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of what a reply carries.

    Arrays contribute name, dtype, shape and raw bytes; metric/config records their
    canonical JSON; an error reply its code and reason.
    """
    digest = hashlib.sha256()
    size = 0

    def feed(chunk: bytes) -> None:
        nonlocal size
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
        size += len(chunk)

    if message.has_error():
        feed(f"error:{message.error.code}:{message.error.reason}".encode())
        return size, digest.hexdigest()
    content = message.content
    for name in sorted(content.array_records):
        for key, array in content.array_records[name].items():
            feed(f"{name}/{key}:{array.dtype}:{list(array.shape)}".encode())
            feed(bytes(array.data))
    for records in (content.metric_records, content.config_records):
        for name in sorted(records):
            items = {key: _jsonable(v) for key, v in records[name].items()}
            feed(json.dumps({name: items}, sort_keys=True).encode())
    return size, digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _round_of(message: Message) -> int | None:
    for record in message.content.config_records.values():
        for key in (k.SERVER_ROUND, "round"):
            value = record.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _reply_epsilon(reply: Message) -> float | None:
    if reply.has_error():
        return None
    for record in reply.content.metric_records.values():
        value = record.get(k.DP_EPSILON)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def site_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: enforce the site policy, then audit the reply (see module doc)."""
    config_path = context.node_config.get(NC_SITE_CONFIG)
    if not config_path:
        return call_next(message, context)
    config = SiteConfig.load(Path(str(config_path)))
    audit = AuditLog.for_site(config)
    run_config = context.run_config
    task = str(run_config.get(k.RC_TASK, ""))
    spent_before = epsilon_spent(config, task) if dp_enabled(run_config) else 0.0
    message_type = message.metadata.message_type
    reason = None
    if message_type.startswith(("train", "evaluate")):
        reason = check_policy(
            config, run_config, spent_before, training=message_type.startswith("train")
        )
    if reason is not None:
        log.warning("refusing %s: %s", message.metadata.message_type, reason)
        reply = Message(
            Error(ErrorCode.MOD_FAILED_PRECONDITION, REFUSAL_PREFIX + reason), reply_to=message
        )
        kind = "refusal"
    else:
        reply = call_next(message, context)
        kind = "error" if reply.has_error() else "reply"
    size, sha = payload_digest(reply)
    eps = _reply_epsilon(reply)
    entry = audit.append(
        {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "site": config.name,
            "run": message.metadata.run_id,
            "round": _round_of(message),
            "type": message.metadata.message_type,
            "kind": kind,
            "size": size,
            "sha256": sha,
            "dp": dp_settings(run_config),
            "epsilon": eps,
            "reason": reply.error.reason if reply.has_error() else None,
        }
    )
    spent = epsilon_spent(config, task) if dp_enabled(run_config) else 0.0
    log.info(
        "site %s: run %s round %s %s -> %s, %d bytes sha256=%s…, ε spent %.3g, ε left %.3g",
        config.name,
        entry["run"],
        entry["round"],
        entry["type"],
        kind,
        size,
        sha[:12],
        spent,
        max(config.policy.epsilon - spent, 0.0),
    )
    return reply
