"""``/api/v1/devices``: enroll, list, inspect, update, retire, heartbeat."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic_core import to_json

from fleet.api.deps import (
    COMMON_RESPONSES,
    CONFLICT,
    NOT_FOUND,
    Operator,
    SessionDep,
    SettingsDep,
    Viewer,
)
from fleet.crud import device_pages as pages
from fleet.crud import devices as crud
from fleet.models.common import MAX_ID, DeviceId, Slug
from fleet.models.devices import (
    Device,
    DeviceCreate,
    DeviceEnrolled,
    DevicePage,
    DevicePublic,
    DeviceStatus,
    DeviceUpdate,
    Heartbeat,
    HeartbeatAck,
    MqttCredentials,
)

router = APIRouter(prefix="/devices", tags=["devices"], responses=COMMON_RESPONSES)

DeviceIdPath = Annotated[DeviceId, Path(description="Device id, e.g. 'dev-0123456789abcdef'.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]


def _load(session: SessionDep, device_id: str) -> Device:
    device = crud.get_device(session, device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id} does not exist")
    return device


def _no_store(response: Response) -> None:
    # The body holds a secret: keep it out of browser and proxy caches.
    response.headers["Cache-Control"] = "no-store"


@router.post(
    "",
    status_code=201,
    response_model=DeviceEnrolled,
    responses=CONFLICT,
    summary="Enroll a device; its MQTT password is in this response only",
)
def enroll_device(
    body: DeviceCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: Operator,
) -> DeviceEnrolled:
    device, password = crud.enroll_device(
        session, body, actor=principal.actor("api"), offline_after_s=settings.offline_after_s
    )
    session.commit()
    _no_store(response)
    return DeviceEnrolled(
        device=crud.public_view(session, device, offline_after_s=settings.offline_after_s),
        mqtt=MqttCredentials(username=device.mqtt_username, password=password),
    )


@router.get("", response_model=DevicePage, summary="List devices with filters, by name")
def list_devices(
    session: SessionDep,
    settings: SettingsDep,
    principal: Viewer,
    group: Annotated[Slug | None, Query(description="Group name.")] = None,
    tag: Annotated[
        list[Slug] | None, Query(max_length=8, description="Tag; repeat to require several.")
    ] = None,
    hardware_target: Annotated[Slug | None, Query(description="e.g. 'rpi5'.")] = None,
    status: Annotated[
        DeviceStatus | None,
        Query(description="Derived status; without it, retired devices are left out."),
    ] = None,
    model_version: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Model version the device runs.")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=63,
            description="Start after this device name (the previous page's `next_after`).",
        ),
    ] = None,
    total: Annotated[
        bool, Query(description="Count every match into `total` (costs a COUNT query).")
    ] = False,
) -> Response:
    filters = crud.DeviceFilter(
        group=group,
        tags=tuple(tag or ()),
        hardware_target=hardware_target,
        status=status,
        model_version_id=model_version,
    )
    query = pages.DevicePageQuery(
        filters=filters, limit=limit, offset=offset, after=after, with_total=total
    )
    page = pages.device_page(session.connection(), query, offline_after_s=settings.offline_after_s)
    # Built as plain dicts and serialized once: validating 50 models cost more than the query.
    return Response(content=pages.page_json(page), media_type="application/json")


@router.get("/{device_id}", response_model=DevicePublic, responses=NOT_FOUND)
def get_device(
    device_id: DeviceIdPath, session: SessionDep, settings: SettingsDep, principal: Viewer
) -> DevicePublic:
    device = _load(session, device_id)
    return crud.public_view(session, device, offline_after_s=settings.offline_after_s)


@router.patch(
    "/{device_id}",
    response_model=DevicePublic,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Rename, move to a group (null: no group), or replace the tags",
)
def update_device(
    device_id: DeviceIdPath,
    body: DeviceUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: Operator,
) -> DevicePublic:
    device = _load(session, device_id)
    crud.update_device(
        session,
        device,
        body,
        actor=principal.actor("api"),
        offline_after_s=settings.offline_after_s,
    )
    session.commit()
    return crud.public_view(session, device, offline_after_s=settings.offline_after_s)


@router.post(
    "/{device_id}/retire",
    response_model=DevicePublic,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Retire a device: it keeps its history but loses broker access",
)
def retire_device(
    device_id: DeviceIdPath, session: SessionDep, settings: SettingsDep, principal: Operator
) -> DevicePublic:
    device = _load(session, device_id)
    crud.retire_device(
        session, device, actor=principal.actor("api"), offline_after_s=settings.offline_after_s
    )
    session.commit()
    return crud.public_view(session, device, offline_after_s=settings.offline_after_s)


@router.post(
    "/{device_id}/credentials",
    response_model=MqttCredentials,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Issue a new MQTT password (shown once; the old one stops working)",
)
def rotate_credentials(
    device_id: DeviceIdPath, response: Response, session: SessionDep, principal: Operator
) -> MqttCredentials:
    device = _load(session, device_id)
    password = crud.rotate_credentials(session, device, actor=principal.actor("api"))
    session.commit()
    _no_store(response)
    return MqttCredentials(username=device.mqtt_username, password=password)


@router.post(
    "/{device_id}/heartbeat",
    response_model=HeartbeatAck,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Record that the device is alive (and which model version it runs)",
)
def heartbeat(
    device_id: DeviceIdPath,
    session: SessionDep,
    principal: Operator,
    body: Heartbeat | None = None,
) -> Response:
    model: object = crud.heartbeat_unchanged()
    if body is not None and "model_version_id" in body.model_fields_set:
        model = body.model_version_id
    recorded = crud.record_heartbeat(session.connection(), device_id, model_version_id=model)
    if recorded is None:
        raise HTTPException(404, f"device {device_id} does not exist")
    session.commit()
    # A HeartbeatAck as a dict, serialized once (the response model is only documentation).
    ack = {
        "device_id": recorded.device_id,
        "status": DeviceStatus.online.value,
        "last_seen_at": recorded.last_seen_at,
        "model_version_id": recorded.model_version_id,
    }
    return Response(content=to_json(ack), media_type="application/json")
