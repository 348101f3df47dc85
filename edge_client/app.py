"""The Flower ``ClientApp`` used by simulated clients and silo sites.

It trains and evaluates the run's task on the client's data. Cross-cutting behaviour
(secure aggregation, DP clipping, auditing) is added as Flower mods, not subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from edge_client.budget_query import handle_budget_query
from edge_client.data import ClientData, partition_data
from edge_client.dp_mods import distributed_dp_share
from edge_client.dp_training import train_with_dp
from edge_client.energy import energy_mod
from edge_client.fairness import audits_fairness, fairness_counts, secure_run
from edge_client.protocol import keys as k
from edge_client.protocol.keys import MT_BUDGET_QUERY
from edge_client.secagg_client import PreMaskTransform, register_secagg
from edge_client.settings import ClientSettings
from edge_client.site_config import SiteConfig
from edge_client.site_policy import site_dp_config, site_mod
from privacy.dp.config import dp_mode
from tasks import evaluate, reported_loss, train_local
from tasks.model_pool import give_back, take_model
from tasks.run_config import as_bool
from tasks.weights import weights_record


def load_client_data(settings: ClientSettings) -> ClientData:
    """The client's data: its partition of the task's dataset, or a silo's own records."""
    if settings.site_config:
        from edge_client.site_data import load_for_task

        return load_for_task(Path(settings.site_config), settings.task, seed=settings.seed)
    return partition_data(
        task_name=settings.task,
        partition_id=settings.partition_id,
        num_partitions=settings.num_partitions,
        partition=settings.partition,
        seed=settings.seed,
    )


def _model_from(message: Message, task_name: str) -> torch.nn.Module:
    """The received global model, in a model built for an earlier message if possible."""
    return take_model(task_name, message.content.array_records[k.ARRAYS].to_torch_state_dict())


def handle_train(message: Message, context: Context) -> Message:
    """Train the received global model on local data; reply with weights and metrics."""
    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    data = load_client_data(settings)
    if as_bool(k.RC_FAIRNESS_REWEIGH, context.run_config.get(k.RC_FAIRNESS_REWEIGH, False)):
        data = data.reweighed(seed=settings.train_seed)
    positive_weights = message.content.config_records[k.CONFIG].get(k.FAIRNESS_POSITIVE_WEIGHTS)
    if isinstance(positive_weights, list):  # equal-opportunity reweighting (server's)
        data = data.positive_weighted(positive_weights, seed=settings.train_seed)  # type: ignore[arg-type]
    model = _model_from(message, settings.task)
    # A site whose policy requires DP trains with its own DP-SGD whatever the run says.
    site_dp = None
    if settings.site_config:
        site_dp = site_dp_config(SiteConfig.load(Path(settings.site_config)))
    if site_dp is not None or dp_mode(context.run_config) == "local":  # docs/privacy.md
        reply = train_with_dp(
            message, context, settings=settings, data=data, model=model, dp=site_dp
        )
        if dp_mode(context.run_config) != "local" and not reply.has_error():
            # DP the run did not ask for: the reply keeps the run's plain shape (the
            # coordinator aggregates metric records with equal keys); the site's ledger
            # and audit log hold what it spent.
            metrics = reply.content.metric_records[k.METRICS]
            for key in (k.DP_EPSILON, k.DP_NOISE_MULTIPLIER, k.DP_SAMPLE_RATE, k.DP_STEPS):
                metrics.pop(key, None)
        return reply
    result = train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.train_seed,
        proximal_mu=settings.proximal_mu,
        momentum=settings.momentum,
    )
    content = RecordDict(
        {
            k.ARRAYS: weights_record(model.state_dict()),  # = ArrayRecord(state_dict)
            k.METRICS: MetricRecord(
                {
                    k.NUM_EXAMPLES: result.num_examples,
                    k.TRAIN_LOSS: reported_loss(result.num_examples, result.loss),
                }
            ),
        }
    )
    give_back(settings.task, model)  # its weights are copied into the reply
    return Message(content=content, reply_to=message)


def handle_evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global model on the client's held-out data."""
    settings = ClientSettings.from_message(context, message.content.config_records[k.CONFIG])
    data = load_client_data(settings)
    model = _model_from(message, settings.task)
    result = evaluate(model, data.x_eval, data.y_eval)
    values: dict[str, int | float | list[int] | list[float]] = {
        k.NUM_EXAMPLES: result.num_examples,
        k.EVAL_LOSS: result.loss,
        k.EVAL_ACCURACY: result.accuracy,
    }
    if audits_fairness(context) and not secure_run(context):  # else: inside the masked sum
        values[k.EVAL_FAIRNESS_COUNTS] = fairness_counts(settings.task, model, data)
    give_back(settings.task, model)
    return Message(content=RecordDict({k.METRICS: MetricRecord(values)}), reply_to=message)


def build_client_app(
    *, mods: list[Mod] | None = None, pre_mask: Sequence[PreMaskTransform] = ()
) -> ClientApp:
    """A ClientApp with fedfleet's train, evaluate and budget-query handlers and the
    given mods.

    Secure aggregation's stages are registered too (``train.secagg`` wraps
    ``handle_train``); ``pre_mask`` transforms each update before it is masked.
    """
    client_app = ClientApp(mods=mods or [])
    client_app.train()(handle_train)
    client_app.evaluate()(handle_evaluate)
    client_app.query(MT_BUDGET_QUERY.split(".", 1)[1])(handle_budget_query)  # pre-flight
    # Distributed DP adds its noise share last, just before masking (no-op unless dp=distributed).
    register_secagg(client_app, train=handle_train, pre_mask=(*pre_mask, distributed_dp_share))
    return client_app


# The component Flower loads (`[tool.flwr.app.components] clientapp`).
app = build_client_app(mods=[site_mod, energy_mod])  # energy inside: the audit sees it
