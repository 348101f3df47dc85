"""The client's side of the fairness audit: per-group confusion counts of a model on the
client's held-out data (tasks/fairness.py), the only fairness data that leaves it.

In a plain run they ride the evaluate reply; under SecAgg+ they are appended to the
masked input of the train step (counts of the model the round started from), so the
coordinator learns only their sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from flwr.app import Context, Message

from edge_client.protocol import keys as k
from privacy.secagg.config import RUN_CONFIG_KEYS as SECAGG_KEYS
from tasks import get_task
from tasks.fairness import group_confusion_counts
from tasks.run_config import as_bool

if TYPE_CHECKING:
    from edge_client.data import ClientData

SECAGG_KEY = SECAGG_KEYS["enabled"]


def audits_fairness(context: Context) -> bool:
    """Whether the run names a sensitive attribute to audit by."""
    return bool(str(context.run_config.get(k.RC_SENSITIVE_ATTRIBUTE, "")))


def secure_run(context: Context) -> bool:
    """Whether the run uses secure aggregation (the counts then travel masked)."""
    return as_bool(SECAGG_KEY, context.run_config.get(SECAGG_KEY, False))


def fairness_counts(task_name: str, model: torch.nn.Module, data: ClientData) -> list[int]:
    """Per-group confusion counts of ``model`` on the client's held-out data, flat."""
    task = get_task(task_name)
    if data.s_eval is None or not task.sensitive_groups:
        raise ValueError(
            f"task {task_name!r} has no sensitive attribute in this client's data; "
            "run without sensitive-attribute"
        )
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_eval)).argmax(dim=1).numpy()
    counts = group_confusion_counts(
        data.y_eval, pred, data.s_eval, n_groups=len(task.sensitive_groups)
    )
    return [int(c) for c in counts.ravel()]


def start_model_counts(message: Message, context: Context) -> list[int]:
    """The counts of the model a train instruction carries (before training), or [] when
    the run audits nothing."""
    if not audits_fairness(context):
        return []
    from edge_client.app import load_client_data  # the app module imports this one
    from edge_client.settings import ClientSettings
    from tasks.model_pool import give_back, take_model

    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    model = take_model(settings.task, message.content.array_records[k.ARRAYS].to_torch_state_dict())
    try:
        return fairness_counts(settings.task, model, load_client_data(settings))
    finally:
        give_back(settings.task, model)
