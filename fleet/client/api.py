"""The fleet API over HTTP (``/api/v1``): runs, rounds, model versions, artifacts.

Every package that reaches the fleet does so through :class:`FleetClient`, never through
the fleet's database code, so it works against any reachable fleet (``docs/fleet-api.md``):

- ``GET /models/{id}`` and ``GET /artifacts/{id}/download`` to fetch a version's
  ``torch`` checkpoint (``fedfleet image build --model``, ``fedfleet run submit --retrain``);
- ``POST /models/{id}/artifacts`` (multipart) to store a checkpoint or a signed ``bundle``
  (``fedfleet image build --upload``, ``fedfleet image publish``);
- ``POST /runs``, ``PUT /runs/{id}/rounds/{n}``, ``PATCH /runs/{id}``, ``POST /models``
  to register a finished run's model with its lineage (``fedfleet model register``);
- ``POST /rollouts``, ``GET /rollouts``, ``GET /rollouts/{id}`` and
  ``POST /rollouts/{id}/pause|resume|abort`` to start, list, watch and steer staged rollouts
  (``fedfleet rollout create|list|show|pause|resume|abort``);
- ``POST /tokens``, ``GET /tokens``, ``DELETE /tokens/{id}`` (admin) to manage API tokens
  (``fedfleet fleet token create|list|revoke``);
- ``POST /policies``, ``GET /policies``, ``GET /policies/{group}`` (admin to apply) and
  ``POST /promotions/{id}/approve`` (admin) for promotion policies
  (``fedfleet policy apply|list|show|approve``);
- ``POST /groups`` and ``POST /devices`` to enrol devices, each with its broker
  credentials shown once (``fedfleet fleet simulate-devices``).

The calls are the constants of :mod:`fleet.client.routes`. Every failure is a
:class:`~fleet.client.connection.FleetError` with one line that says what to do; the
token never appears in one. httpx is imported when a client is made, not with the module.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.client.connection import (
    API_PREFIX,
    TOKEN_ENV,
    FleetConnection,
    FleetError,
    FleetInputError,
    FleetNotFoundError,
    FleetUnreachableError,
)
from fleet.client.routes import (
    ABORT_ROLLOUT,
    APPLY_POLICY,
    APPROVE_PROMOTION,
    CREATE_GROUP,
    CREATE_ROLLOUT,
    CREATE_RUN,
    CREATE_TOKEN,
    DEPRECATE_MODEL,
    DOWNLOAD_ARTIFACT,
    ENROLL_DEVICE,
    GET_MODEL,
    GET_POLICY,
    GET_PROMOTION,
    GET_ROLLOUT,
    GET_RUN,
    LIST_DEVICES,
    LIST_POLICIES,
    LIST_ROLLOUTS,
    LIST_RUNS,
    LIST_TOKENS,
    PAUSE_ROLLOUT,
    REGISTER_MODEL,
    REPORT_ROUND,
    RESUME_ROLLOUT,
    REVOKE_TOKEN,
    TIMELINE,
    UPDATE_RUN,
    UPLOAD_ARTIFACT,
    ArtifactForm,
    ArtifactInfo,
    DeviceCreateBody,
    DeviceInfo,
    DevicePage,
    EnrolledDevice,
    ModelCreateBody,
    ModelInfo,
    PolicyApplyBody,
    PolicyInfo,
    PromotionInfo,
    RolloutAbortBody,
    RolloutCreateBody,
    RolloutInfo,
    RolloutPage,
    RolloutSummary,
    RoundReportBody,
    Route,
    RunCreateBody,
    RunInfo,
    RunPage,
    RunUpdateBody,
    TimelineEntry,
    TokenCreateBody,
    TokenCreated,
    TokenInfo,
)

TIMEOUT_S = 30.0
_CHUNK = 1 << 20
# Upload/download size bound: the fleet's own default upload limit is far below this.
MAX_DOWNLOAD_BYTES = 2 << 30


class FleetClient:
    """Calls to one fleet's API; use as a context manager (closes the connection).

    ``transport`` (an ``httpx`` transport) answers in place of the network, for tests.
    """

    def __init__(
        self, connection: FleetConnection, *, timeout_s: float = TIMEOUT_S, transport: Any = None
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with the server extra
            raise FleetError(
                'talking to the fleet needs httpx; install fedfleet["server"]'
            ) from exc
        self._httpx = httpx
        self.url = connection.url
        self._client = httpx.Client(
            base_url=connection.url + API_PREFIX,
            headers={"Authorization": f"Bearer {connection.token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --- runs and rounds ------------------------------------------------------------------

    def get_run(self, run_id: int) -> RunInfo:
        """Fleet run ``run_id``; :class:`FleetNotFoundError` if absent."""
        what = f"fleet run {run_id}"
        path = GET_RUN.url(run_id=run_id)
        response = self._call(GET_RUN, path, what=what)
        if response.status_code == 404:
            raise FleetNotFoundError(f"{what}: not found at {self.url}{API_PREFIX}{path}")
        self._check(response, what=what)
        return RunInfo.from_json(response.json())

    def list_runs(self, *, status: str, limit: int = 500) -> list[RunInfo]:
        """The fleet's runs in ``status`` (e.g. ``created``), newest first."""
        what = f"listing the fleet's {status} runs"
        params = {"status": status, "limit": limit}
        response = self._call(LIST_RUNS, LIST_RUNS.url(), what=what, params=params)
        self._check(response, what=what)
        return list(RunPage.from_json(response.json()).items)

    def create_run(
        self,
        *,
        task: str,
        name: str = "",
        strategy: str | None = None,
        config: Mapping[str, Any] | None = None,
        what: str | None = None,
    ) -> RunInfo:
        """Record a new run (status ``created``). ``what`` names the call in errors."""
        body: RunCreateBody = {"name": name, "task": task, "config": dict(config or {})}
        if strategy is not None:
            body["strategy"] = strategy
        answer = self._send(CREATE_RUN, body, what=what or f"recording run {name}")
        return RunInfo.from_json(answer)

    def update_run(
        self,
        run_id: int,
        *,
        status: str | None = None,
        final_model_version_id: int | None = None,
        reason: str | None = None,
        what: str | None = None,
    ) -> RunInfo:
        """Change a run's status (``running``, ``completed``, ``failed``) or final model;
        ``reason`` says why (the fleet's timeline shows it)."""
        body: RunUpdateBody = {}
        if status is not None:
            body["status"] = status
        if reason is not None:
            body["reason"] = reason
        if final_model_version_id is not None:
            body["final_model_version_id"] = final_model_version_id
        answer = self._send(
            UPDATE_RUN, body, run_id=run_id, what=what or f"updating fleet run {run_id}"
        )
        return RunInfo.from_json(answer)

    def report_round(
        self, run_id: int, round_number: int, report: RoundReportBody, *, what: str | None = None
    ) -> None:
        """Record round ``round_number``'s metrics (reporting a round again replaces it)."""
        self._send(
            REPORT_ROUND,
            report,
            run_id=run_id,
            round_number=round_number,
            what=what or f"reporting round {round_number} of fleet run {run_id}",
        )

    # --- model versions -------------------------------------------------------------------

    def get_model(self, version: int) -> ModelInfo:
        """The model version with its artifacts; :class:`FleetNotFoundError` if absent."""
        path = GET_MODEL.url(model_id=version)
        response = self._call(GET_MODEL, path, what=f"model version {version}")
        if response.status_code == 404:
            raise FleetNotFoundError(
                f"model version {version} is not in the registry at {self.url}; list the "
                f"versions with GET {self.url}{API_PREFIX}/models"
            )
        self._check(response, what=f"reading model version {version}")
        return ModelInfo.from_json(response.json())

    def register_model(
        self,
        *,
        task: str,
        name: str = "",
        description: str = "",
        metrics: Mapping[str, float] | None = None,
        source_run_id: int | None = None,
        source_round: int | None = None,
        parent_id: int | None = None,
        what: str | None = None,
    ) -> ModelInfo:
        """Register a new version (stage ``registered``) with its lineage and metrics."""
        body: ModelCreateBody = {
            "task": task,
            "name": name,
            "description": description,
            "metrics": dict(metrics or {}),
        }
        if source_run_id is not None:
            body["source_run_id"] = source_run_id
        if source_round is not None:
            body["source_round"] = source_round
        if parent_id is not None:
            body["parent_id"] = parent_id
        answer = self._send(REGISTER_MODEL, body, what=what or "registering the model")
        return ModelInfo.from_json(answer)

    def deprecate_model(self, version: int, *, what: str | None = None) -> ModelInfo:
        """Mark a version as not to be rolled out any more."""
        answer = self._send(
            DEPRECATE_MODEL,
            None,
            model_id=version,
            what=what or f"deprecating model version {version}",
        )
        return ModelInfo.from_json(answer)

    # --- artifacts ------------------------------------------------------------------------

    def upload_artifact(
        self,
        version: int,
        path: Path,
        *,
        format: str,
        target: str,
        sha256: str,
        signature: str | None = None,
    ) -> ArtifactInfo:
        """Store ``path`` as an artifact of ``version``; the fleet checks ``sha256``."""
        fields: ArtifactForm = {"format": format, "target": target, "sha256": sha256}
        if signature is not None:
            fields["signature"] = signature
        what = f"the {format} artifact for {target} of model version {version}"
        (file_field,) = UPLOAD_ARTIFACT.files
        with Path(path).open("rb") as handle:
            response = self._call(
                UPLOAD_ARTIFACT,
                UPLOAD_ARTIFACT.url(model_id=version),
                what=what,
                data=fields,
                files={file_field: (Path(path).name, handle, "application/octet-stream")},
            )
        if response.status_code == 409:
            raise FleetError(
                f"model version {version} already has a {format} artifact for {target}; "
                "an artifact is never replaced: register a new model version for a new build"
            )
        if response.status_code == 404:
            raise FleetNotFoundError(
                f"model version {version} is not in the registry at {self.url}; list the "
                f"versions with GET {self.url}{API_PREFIX}/models"
            )
        self._check(response, what=f"storing {what}")
        return ArtifactInfo.from_json(response.json())

    def download(self, artifact: ArtifactInfo, dest: Path) -> Path:
        """Stream an artifact to ``dest`` (atomically), checking size and SHA-256.

        Nothing is left at ``dest`` (nor a temporary file beside it) when the transfer fails
        or the bytes do not hash to what the registry recorded.
        """
        dest = Path(dest)
        what = f"artifact {artifact.id} ({artifact.filename})"
        path = DOWNLOAD_ARTIFACT.url(artifact_id=artifact.id)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with (
                os.fdopen(fd, "wb") as out,
                self._stream(DOWNLOAD_ARTIFACT, path, what=what) as response,
            ):
                if response.status_code == 404:
                    raise FleetNotFoundError(
                        f"{what} is listed but its file is missing on the fleet at {self.url}; "
                        "upload it again"
                    )
                self._check(response, what=f"downloading {what}")
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise FleetError(f"{what} is larger than {MAX_DOWNLOAD_BYTES} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != artifact.sha256:
                raise FleetError(
                    f"{what} downloaded from {self.url} has SHA-256 {got}, but the registry "
                    f"records {artifact.sha256} ({size} bytes received, {artifact.size_bytes} "
                    "expected); nothing was used. The transfer or the fleet's storage is "
                    "corrupt: retry, or upload the checkpoint again"
                )
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    # --- rollouts -------------------------------------------------------------------------

    def get_rollout(self, rollout_id: int) -> RolloutInfo:
        """Rollout ``rollout_id`` with each device's phase; :class:`FleetNotFoundError`."""
        return self._rollout_call(GET_ROLLOUT, rollout_id, None, verb="reading")

    def pause_rollout(self, rollout_id: int) -> RolloutInfo:
        """No new wave, no resend until resumed (answers still count)."""
        return self._rollout_call(PAUSE_ROLLOUT, rollout_id, None, verb="pausing")

    def resume_rollout(self, rollout_id: int) -> RolloutInfo:
        """Continue a paused rollout."""
        return self._rollout_call(RESUME_ROLLOUT, rollout_id, None, verb="resuming")

    def abort_rollout(self, rollout_id: int, *, rollback: bool) -> RolloutInfo:
        """Stop it; ``rollback`` sends the current wave's installed devices back."""
        body: RolloutAbortBody = {"rollback": rollback}
        return self._rollout_call(ABORT_ROLLOUT, rollout_id, body, verb="aborting")

    def create_rollout(
        self,
        *,
        model_version_id: int,
        group: str,
        waves: list[int],
        max_failure_rate: float,
        ack_timeout_s: float,
        max_accuracy_drop_points: float | None = None,
        max_latency_ratio: float | None = None,
        max_error_rate: float | None = None,
        max_prediction_shift: float | None = None,
        soak_s: float = 0.0,
        min_quality_devices: int = 2,
        min_quality_samples: int = 200,
    ) -> RolloutSummary:
        """Record a staged rollout; the fleet's MQTT service carries it out.

        The quality thresholds (None: not checked), ``soak_s`` and the evidence bounds
        are the model-aware canary's (``RolloutCreate``). The fleet's refusal (an unknown
        model version or group, waves that do not increase) is the :class:`FleetError`'s
        line.
        """
        body: RolloutCreateBody = {
            "model_version_id": model_version_id,
            "group": group,
            "waves": list(waves),
            "max_failure_rate": max_failure_rate,
            "ack_timeout_s": ack_timeout_s,
            "soak_s": soak_s,
            "min_quality_devices": min_quality_devices,
            "min_quality_samples": min_quality_samples,
        }
        if max_accuracy_drop_points is not None:
            body["max_accuracy_drop_points"] = max_accuracy_drop_points
        if max_latency_ratio is not None:
            body["max_latency_ratio"] = max_latency_ratio
        if max_error_rate is not None:
            body["max_error_rate"] = max_error_rate
        if max_prediction_shift is not None:
            body["max_prediction_shift"] = max_prediction_shift
        what = f"creating a rollout of model version {model_version_id}"
        response = self._call(CREATE_ROLLOUT, CREATE_ROLLOUT.url(), what=what, json=dict(body))
        if response.status_code in (404, 409, 422):
            raise FleetError(_detail(response))
        self._check(response, what=what)
        return RolloutSummary.from_json(response.json())

    def list_rollouts(self) -> RolloutPage:
        """The newest rollouts (the API's first page) and how many there are in all."""
        response = self._call(LIST_ROLLOUTS, LIST_ROLLOUTS.url(), what="listing rollouts")
        self._check(response, what="listing rollouts")
        return RolloutPage.from_json(response.json())

    def rollouts_of_model(self, version: int, *, page_size: int = 500) -> list[RolloutSummary]:
        """Every rollout of model version ``version``, newest first (all pages read)."""
        found: list[RolloutSummary] = []
        offset = 0
        what = f"listing the rollouts of model version {version}"
        while True:
            params = {"limit": page_size, "offset": offset}
            response = self._call(LIST_ROLLOUTS, LIST_ROLLOUTS.url(), what=what, params=params)
            self._check(response, what=what)
            page = RolloutPage.from_json(response.json())
            found += [r for r in page.items if r.model_version_id == version]
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return found

    def _rollout_call(
        self, route: Route, rollout_id: int, body: Mapping[str, Any] | None, *, verb: str
    ) -> RolloutInfo:
        what = f"{verb} rollout {rollout_id}"
        extra = {} if body is None else {"json": dict(body)}
        response = self._call(route, route.url(rollout_id=rollout_id), what=what, **extra)
        if response.status_code == 404:
            raise FleetNotFoundError(
                f"rollout {rollout_id} does not exist at {self.url}; list them with "
                f"GET {self.url}{API_PREFIX}/rollouts"
            )
        if response.status_code == 409:
            raise FleetError(_detail(response))
        self._check(response, what=what)
        return RolloutInfo.from_json(response.json())

    # --- tokens (admin) --------------------------------------------------------------------

    def create_token(self, *, name: str, role: str, ttl_days: int | None = None) -> TokenCreated:
        """A new API token; its secret is in the answer only."""
        body: TokenCreateBody = {"name": name, "role": role}
        if ttl_days is not None:
            body["ttl_days"] = ttl_days
        answer = self._send(CREATE_TOKEN, body, what=f"creating a {role} token", admin=True)
        return TokenCreated.from_json(answer)

    def list_tokens(self) -> list[TokenInfo]:
        """Every token (never a secret)."""
        answer = self._send(LIST_TOKENS, None, what="listing tokens", admin=True)
        return [TokenInfo.from_json(t) for t in answer]

    def revoke_token(self, token_id: int) -> TokenInfo:
        """Revoke a token; :class:`FleetNotFoundError` if there is none with that id."""
        what = f"revoking token {token_id}"
        response = self._call(REVOKE_TOKEN, REVOKE_TOKEN.url(token_id=token_id), what=what)
        if response.status_code == 404:
            raise FleetNotFoundError(
                f"there is no token {token_id}; see `fedfleet fleet token list`"
            )
        self._check(response, what=what, admin=True)
        return TokenInfo.from_json(response.json())

    # --- promotion policies (admin to change) -----------------------------------------------

    def apply_policy(self, source: str) -> PolicyInfo:
        """Store a policy file's text as its group's next version.

        The fleet's refusal (an unknown group or target, a value out of range, a signing
        key it cannot read) is a :class:`FleetInputError` whose line is the fleet's reason.
        """
        body: PolicyApplyBody = {"source": source}
        what = "applying a promotion policy"
        response = self._call(APPLY_POLICY, APPLY_POLICY.url(), what=what, json=dict(body))
        if response.status_code == 422:
            raise FleetInputError(_detail(response))
        self._check(response, what=what, admin=True)
        return PolicyInfo.from_json(response.json())

    def list_policies(self) -> list[PolicyInfo]:
        """Every group's current policy, by group name."""
        answer = self._send(LIST_POLICIES, None, what="listing promotion policies")
        return [PolicyInfo.from_json(p) for p in answer]

    def get_policy(self, group: str, *, version: int | None = None) -> PolicyInfo:
        """``group``'s current policy, or its version ``version``; :class:`FleetNotFoundError`."""
        what = f"reading the policy of group {group}"
        params = {} if version is None else {"params": {"version": version}}
        response = self._call(GET_POLICY, GET_POLICY.url(group=group), what=what, **params)
        if response.status_code in (404, 422):
            raise FleetNotFoundError(_detail(response))
        self._check(response, what=what)
        return PolicyInfo.from_json(response.json())

    def approve_promotion(self, promotion_id: int) -> PromotionInfo:
        """Record an operator's approval of a pending promotion (admin)."""
        what = f"approving promotion {promotion_id}"
        path = APPROVE_PROMOTION.url(promotion_id=promotion_id)
        response = self._call(APPROVE_PROMOTION, path, what=what)
        if response.status_code == 404:
            raise FleetNotFoundError(_detail(response))
        if response.status_code == 409:
            raise FleetError(_detail(response))
        self._check(response, what=what, admin=True)
        return PromotionInfo.from_json(response.json())

    def get_promotion(self, promotion_id: int) -> PromotionInfo:
        """One promotion; :class:`FleetNotFoundError` when there is none."""
        what = f"reading promotion {promotion_id}"
        path = GET_PROMOTION.url(promotion_id=promotion_id)
        response = self._call(GET_PROMOTION, path, what=what)
        if response.status_code == 404:
            raise FleetNotFoundError(_detail(response))
        self._check(response, what=what)
        return PromotionInfo.from_json(response.json())

    def timeline(self, group: str, *, model_version: int | None = None) -> list[TimelineEntry]:
        """``group``'s timeline, oldest first; :class:`FleetNotFoundError` for no such group."""
        what = f"reading the timeline of group {group}"
        params: dict[str, Any] = {"group": group}
        if model_version is not None:
            params["model_version"] = model_version
        response = self._call(TIMELINE, TIMELINE.url(), what=what, params=params)
        if response.status_code in (404, 422):
            raise FleetNotFoundError(_detail(response))
        self._check(response, what=what)
        return [TimelineEntry.from_json(item) for item in response.json()]

    # --- devices ----------------------------------------------------------------------------

    def ensure_group(self, name: str) -> None:
        """Create group ``name`` unless it exists."""
        body = {"name": name}
        what = f"creating group {name}"
        response = self._call(CREATE_GROUP, CREATE_GROUP.url(), what=what, json=body)
        if response.status_code != 409:  # 409: it exists already
            self._check(response, what=what)

    def enroll_device(self, *, name: str, hardware_target: str, group: str) -> EnrolledDevice:
        """Enrol a device; the answer holds its broker password, shown this once."""
        body: DeviceCreateBody = {"name": name, "hardware_target": hardware_target, "group": group}
        answer = self._send(ENROLL_DEVICE, body, what=f"enrolling device {name}")
        return EnrolledDevice.from_json(answer)

    def devices_running(self, version: int, *, page_size: int = 200) -> list[DeviceInfo]:
        """Every device that reports running model version ``version`` (by name; the
        fleet's keyset pages are followed to the end)."""
        devices: list[DeviceInfo] = []
        after: str | None = None
        what = f"listing the devices running model version {version}"
        while True:
            params: dict[str, Any] = {"model_version": version, "limit": page_size}
            if after is not None:
                params["after"] = after
            response = self._call(LIST_DEVICES, LIST_DEVICES.url(), what=what, params=params)
            self._check(response, what=what)
            page = DevicePage.from_json(response.json())
            devices.extend(page.items)
            if page.next_after is None or not page.items:
                return devices
            after = page.next_after

    # --- plumbing ---------------------------------------------------------------------

    def _send(
        self,
        route: Route,
        body: Mapping[str, Any] | None,
        *,
        what: str,
        admin: bool = False,
        **params: int,
    ) -> Any:
        """Call ``route`` with a JSON ``body``; the JSON answer (any non-2xx is a FleetError)."""
        extra = {} if body is None else {"json": dict(body)}
        response = self._call(route, route.url(**params), what=what, **extra)
        self._check(response, what=what, admin=admin)
        return response.json()

    def _call(self, route: Route, path: str, *, what: str, **kwargs: Any) -> Any:
        try:
            return self._client.request(route.method, path, **kwargs)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    @contextmanager
    def _stream(self, route: Route, path: str, *, what: str) -> Iterator[Any]:
        try:
            with self._client.stream(route.method, path) as response:
                yield response
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    def _unreachable(self, exc: Exception, what: str) -> FleetError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FleetUnreachableError(
            f"cannot reach the fleet at {self.url} for {what} ({reason}); is `fedfleet fleet "
            "serve` running there? check --fleet-url or $FEDFLEET_URL"
        )

    def _check(self, response: Any, *, what: str, admin: bool = False) -> None:
        status = int(response.status_code)
        if 200 <= status < 300:
            return
        detail = _detail(response)
        if status == 401:
            reason = detail.split(" (", 1)[0]  # the fleet's own hint names a viewer token
            raise FleetError(
                f"the fleet at {self.url} refused the token in ${TOKEN_ENV} (HTTP 401: "
                f"{reason}); export a valid one from `fedfleet fleet token create --role operator`"
            )
        if status == 403:
            needs = "an admin token" if admin else "an operator or admin token"
            how = "--role admin` (the first: add --bootstrap" if admin else "--role operator"
            raise FleetError(
                f"the token in ${TOKEN_ENV} may not do this ({detail}); {what} needs {needs}: "
                f"`fedfleet fleet token create {how}`" + (")" if admin else "")
            )
        raise FleetError(f"the fleet refused {what} (HTTP {status}: {detail})")


def _detail(response: Any) -> str:
    """The ``detail`` line of a fleet error body, else the start of the text."""
    try:
        response.read()
        body = response.json()
    except Exception:  # not JSON (a proxy's HTML page, an empty body)
        text = response.text.strip().splitlines()
        return (text[0] if text else response.reason_phrase or "no detail")[:200]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])[:500]
    return str(body)[:200]
