"""A run's lineage in the fleet: run → model version → bundles → rollouts → devices.

Devices running the version are those whose heartbeat reports it (``GET /devices
?model_version=N``); a rollout's own rows say which devices it installed.

Read through the fleet API (:class:`fleet.client.FleetClient`, a viewer token is enough),
never the fleet's database. Every value keeps the API path it was read from
(``source``), so the report can say, and a test can check, where each number came from.
"""

from __future__ import annotations

from typing import Any

from fleet.client import FleetClient, RolloutInfo

INSTALLED = "installed"
DEVICE_PAGE = 500  # the API's largest page: one request in the common case


def fleet_lineage(client: FleetClient, fleet_run_id: int, *, model_sha256: str | None) -> dict:
    """The lineage of fleet run ``fleet_run_id`` (raises :class:`fleet.client.FleetError`).

    ``model_sha256``: the run folder's ``model.pt`` digest, compared with the registered
    ``torch`` checkpoint's (does the registry hold the very model this folder produced?).
    """
    run = client.get_run(fleet_run_id)
    lineage: dict[str, Any] = {
        "fleet_url": client.url,
        "run": {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "final_model_version_id": run.final_model_version_id,
            "source": f"/runs/{run.id}",
        },
        "model": None,
        "devices": None,
        "rollouts": [],
    }
    if run.final_model_version_id is None:
        return lineage
    model = client.get_model(run.final_model_version_id)
    artifacts = [
        {
            "index": i,
            "id": a.id,
            "format": a.format,
            "target": a.target,
            "sha256": a.sha256,
            "size_bytes": a.size_bytes,
            "signed": a.signature is not None,
        }
        for i, a in enumerate(model.artifacts)
    ]
    checkpoints = [a["sha256"] for a in artifacts if a["format"] == "torch"]
    lineage["model"] = {
        "id": model.id,
        "task": model.task,
        "stage": model.stage,
        "artifacts": artifacts,
        "checkpoint_matches_run": (model_sha256 in checkpoints) if model_sha256 else None,
        "source": f"/models/{model.id}",
    }
    running = client.devices_running(model.id, page_size=DEVICE_PAGE)
    lineage["devices"] = {
        "count": len(running),
        "names": [d.name for d in running],
        "source": f"/devices?model_version={model.id}&limit={DEVICE_PAGE}",
    }
    mine = client.rollouts_of_model(model.id)
    lineage["rollouts"] = [_rollout(client.get_rollout(r.id)) for r in mine]
    return lineage


def _rollout(info: RolloutInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "group": info.group,
        "status": info.status,
        "waves": info.waves,
        "installed": sum(d.phase == INSTALLED for d in info.devices),
        "devices": [
            {"index": i, "id": d.device_id, "name": d.device_name, "phase": d.phase}
            for i, d in enumerate(info.devices)
        ],
        "source": f"/rollouts/{info.id}",
    }
