"""The site's guard around the ClientApp: policy before, audit after.

``site_mod`` is a Flower client mod. When the SuperNode's node config names a site
config (``site-config``), it

1. checks the site policy *before* any training (:func:`check_policy`). The site's
   policy decides, not the run config: the run's ``dp`` value must be one of
   :class:`DPValue` (anything else — ``"yes"``, ``"on"``, ``1`` — is ambiguous and
   refused); the task must be on the allowlist; a site that requires secure aggregation
   answers only masked updates (``train.secagg``) of runs with ``secagg`` on, in rounds
   of at least ``min-secagg-sites`` participants; a site that requires DP refuses
   federated evaluation (its metrics are computed on the site's data without noise) and
   every training it answers runs the site's OWN DP-SGD (:func:`site_dp_config`, used
   by ``edge_client.app.handle_train``) whatever ``dp`` says, charged to its ledger
   before the reply leaves. Any training with DP is refused once the task's ε budget is
   used up. A refusal is an error reply (``MOD_FAILED_PRECONDITION``) whose reason names
   the site; the coordinator records it;
2. appends every reply that leaves the site — result, refusal or error — to the site's
   hash-chained audit log (run, round, message type, payload size and SHA-256, DP
   parameters, ε of this reply and in total), and logs one line per message.

Without a ``site-config`` (a simulated client) the mod passes the message through.
ε spent comes from the site's privacy ledger (``privacy.ledger``), which also reserves
each DP training's ε; this mod refuses up front once the budget is used up.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from edge_client.audit import AuditLog
from edge_client.energy import sent_energy
from edge_client.protocol import keys as k
from edge_client.protocol import secagg as sa
from edge_client.protocol.site import NC_SITE_CONFIG
from edge_client.site_config import LEDGER_FILE, SiteConfig
from privacy.dp import DPConfig
from privacy.dp.config import DP_MODES, RC_DP
from privacy.secagg.client import unpack_ids
from privacy.secagg.config import RUN_CONFIG_KEYS as SECAGG_KEYS

RC_SECAGG = SECAGG_KEYS["enabled"]

log = logging.getLogger(__name__)

REFUSAL_PREFIX = "site policy refused: "
SECAGG_SETUP = sa.MT_SECAGG_SETUP  # the stage that names the round's participants
MASKED_TRAIN = sa.MT_SECAGG_TRAIN  # the only train reply a require-secagg site sends

# The accepted values of the run config's ``dp``: exactly the DP modes of
# ``privacy.dp`` (one source), nothing else — no aliases, no case folding.
DPValue = enum.StrEnum("DPValue", {mode.upper(): mode for mode in DP_MODES})  # type: ignore[misc]


def parse_dp(run_config: Mapping[str, Any]) -> enum.StrEnum:
    """The run's ``dp`` value (absent: ``none``); ValueError naming the accepted values."""
    value = run_config.get(RC_DP, DPValue("none"))
    if isinstance(value, str):
        try:
            return DPValue(value)  # type: ignore[no-any-return]
        except ValueError:
            pass
    raise ValueError(
        f"the run config's dp = {value!r} is not one of {', '.join(DP_MODES)}; "
        "the site refuses unknown or ambiguous privacy settings"
    )


def dp_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's DP parameters (every ``dp``/``dp-*`` key), as recorded in the audit log."""
    return {
        key: value
        for key, value in sorted(run_config.items())
        if key == RC_DP or key.startswith(RC_DP + "-")
    }


def site_dp_config(config: SiteConfig) -> DPConfig | None:
    """The site's own DP-SGD settings when its policy requires DP, else None: local
    DP-SGD with the site's noise multiplier and clip, at its δ."""
    policy = config.policy
    if not policy.require_dp:
        return None
    return DPConfig(
        mode="local",
        noise_multiplier=policy.dp_noise_multiplier,
        clip=policy.dp_clip,
        delta=policy.delta,
    )


def trains_with_dp(config: SiteConfig, run_config: Mapping[str, Any]) -> bool:
    """Whether a training at this site runs DP-SGD: always if the site requires DP,
    else when the run asks for ``dp = "local"``."""
    if config.policy.require_dp:
        return True
    try:
        return parse_dp(run_config) == DPValue("local")
    except ValueError:
        return False


def epsilon_spent(config: SiteConfig, task: str) -> float:
    """ε the site has spent on ``task`` (at its policy δ), from its privacy ledger."""
    if not (config.state_dir / LEDGER_FILE).exists():
        return 0.0
    from privacy.ledger import PrivacyLedger  # the DP feature's ledger (issue 4)

    ledger = PrivacyLedger.in_state_dir(config.state_dir, site=config.name)
    return ledger.spent(task=task, delta=config.policy.delta)


def check_policy(
    config: SiteConfig,
    run_config: Mapping[str, Any],
    spent: float,
    *,
    message_type: str = "train",
    participants: int | None = None,
) -> str | None:
    """The reason to refuse this instruction, or None if the site agrees (module doc).

    ``spent``: ε the site has spent on the run's task; ``participants``: the number of
    sites a secure-aggregation setup names (only for :data:`SECAGG_SETUP`).
    """
    policy, site = config.policy, config.name
    try:
        parse_dp(run_config)
    except ValueError as exc:
        return f"site {site}: {exc}"
    task = run_config.get(k.RC_TASK, "")
    if not isinstance(task, str) or task not in policy.allowed_tasks:
        return (
            f"task {task!r} is not on site {site}'s allowlist "
            f"({', '.join(policy.allowed_tasks) or 'empty'})"
        )
    kind = message_type.split(".", 1)[0]
    if kind == "train" and policy.require_secagg:
        if run_config.get(RC_SECAGG) is not True:
            return f"site {site} requires secure aggregation and the run has secagg off"
        if message_type != MASKED_TRAIN:
            return (
                f"site {site} requires secure aggregation and the instruction "
                f"{message_type!r} asks for an unmasked update"
            )
    too_few = participants is not None and participants < policy.min_secagg_sites
    if message_type == SECAGG_SETUP and too_few:
        return (
            f"site {site} requires at least {policy.min_secagg_sites} sites in a "
            f"secure-aggregation round; this one has {participants}"
        )
    if kind == "evaluate" and policy.require_dp:
        return (
            f"site {site} requires differential privacy and federated evaluation "
            "replies are computed on its data without noise"
        )
    if kind == "train" and trains_with_dp(config, run_config) and spent >= policy.epsilon:
        # the per-round check is the ledger's (it reserves each training's ε)
        return (
            f"privacy budget of site {site} is used up for task {task!r}: "
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


def _audit_value(value: Any) -> Any:
    """``value`` if the audit log can hold it as JSON as is, else its repr."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return repr(value)


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


def _participants(message: Message) -> int | None:
    """How many sites a secure-aggregation setup names (None if it names none)."""
    record = message.content.config_records.get(sa.SECAGG)
    value = None if record is None else record.get(sa.SA_PARTICIPANTS)
    if not isinstance(value, bytes):
        return None
    try:
        return len(set(unpack_ids(value)))  # a node named twice is one site
    except ValueError:
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
    with_dp = trains_with_dp(config, run_config)
    spent_before = epsilon_spent(config, task) if with_dp else 0.0
    message_type = message.metadata.message_type
    reason = check_policy(
        config,
        run_config,
        spent_before,
        message_type=message_type,
        participants=_participants(message) if message_type == SECAGG_SETUP else None,
    )
    if reason is not None:
        log.warning("refusing %s: %s", message.metadata.message_type, reason)
        reply = Message(
            Error(ErrorCode.MOD_FAILED_PRECONDITION, REFUSAL_PREFIX + reason), reply_to=message
        )
        kind = "refusal"
    else:
        try:
            reply = call_next(message, context)
        except Exception as exc:  # an error reply, audited, not a crash
            log.exception("the ClientApp failed on %s", message_type)
            reply = Message(
                Error(
                    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    f"site {config.name}: {type(exc).__name__}: {exc}",
                ),
                reply_to=message,
            )
        kind = "error" if reply.has_error() else "reply"
    size, sha = payload_digest(reply)
    spent = epsilon_spent(config, task) if with_dp else 0.0  # the ledger, read once after
    eps = _reply_epsilon(reply)
    if eps is None and with_dp and kind == "reply" and message_type.startswith("train"):
        eps = spent  # the site's own DP: its ledger says what it cost
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
            "dp": {key: _audit_value(v) for key, v in dp_settings(run_config).items()},
            "epsilon": eps,
            "reason": reply.error.reason if reply.has_error() else None,
            "energy": sent_energy(context),  # measured energy it delivered (edge_client.energy)
        }
    )
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
