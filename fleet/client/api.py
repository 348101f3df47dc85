"""A client of the fleet's model registry over HTTP (``/api/v1``; build side only).

The build side talks to the fleet only through its HTTP contract (``docs/fleet-api.md``),
never through the fleet's database code, so it works against any reachable fleet:

- ``GET  /models/{id}``, ``GET /models/{id}/artifacts``, ``GET /artifacts/{id}/download``
  to fetch a version's ``torch`` checkpoint (``fedfleet image build --model``);
- ``POST /models/{id}/artifacts`` (multipart) to store a signed ``bundle``
  (``fedfleet image build --upload``, ``fedfleet image publish``);
- ``POST /runs``, ``PUT /runs/{id}/rounds/{n}``, ``PATCH /runs/{id}``, ``POST /models``
  to register a finished run's model with its lineage (``fedfleet model register``).

Where the fleet is: ``--fleet-url`` or ``$FEDFLEET_URL`` (default the address
``fedfleet fleet serve`` listens on). The API token comes ONLY from ``$FEDFLEET_TOKEN``:
a command-line argument would land in shell history and process listings. The token is
never printed, logged or put in an error message.

Every failure is a :class:`RegistryError` with one line that says what to do.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

URL_ENV = "FEDFLEET_URL"
TOKEN_ENV = "FEDFLEET_TOKEN"  # noqa: S105 - the variable's name, not a secret
DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
# Upload/download size bound: the fleet's own default upload limit is far below this.
MAX_DOWNLOAD_BYTES = 2 << 30


class RegistryError(Exception):
    """The registry could not be used. ``str(err)`` is one line with the fix."""


class RegistryNotFoundError(RegistryError):
    """The version or artifact asked for does not exist (or has no such artifact)."""


@dataclass(frozen=True)
class FleetConnection:
    """Where the fleet API is and the bearer token to use (``repr`` hides the token)."""

    url: str
    token: str

    def __repr__(self) -> str:
        return f"FleetConnection(url={self.url!r}, token=<hidden>)"


def connection_from_env(
    url: str | None = None, environ: Mapping[str, str] | None = None
) -> FleetConnection:
    """The fleet URL (argument, else ``$FEDFLEET_URL``, else the default) and the token.

    Raises:
        RegistryError: the URL is not ``http(s)://host[:port]`` or ``$FEDFLEET_TOKEN`` is unset.
    """
    env = os.environ if environ is None else environ
    raw = (url or env.get(URL_ENV) or DEFAULT_URL).strip().rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(
            f"fleet URL {raw!r} is not an http(s) address; pass --fleet-url "
            "http://HOST:PORT (what `fedfleet fleet serve` prints)"
        )
    if parts.query or parts.fragment or parts.username:
        raise RegistryError(
            f"fleet URL {raw!r} must be just scheme://host:port[/prefix]; drop the "
            "user, query and fragment (the token goes in $FEDFLEET_TOKEN)"
        )
    raw = raw.removesuffix(API_PREFIX)
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise RegistryError(
            f"${TOKEN_ENV} is not set; create a token with `fedfleet fleet token create "
            f"--role operator` and `export {TOKEN_ENV}=...` (it is never taken on the command line)"
        )
    return FleetConnection(url=raw, token=token)


@dataclass(frozen=True)
class ArtifactInfo:
    """One artifact row of the registry (``ArtifactPublic``)."""

    id: int
    model_version_id: int
    format: str
    target: str
    filename: str
    size_bytes: int
    sha256: str
    signature: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ArtifactInfo:
        return cls(
            id=int(body["id"]),
            model_version_id=int(body["model_version_id"]),
            format=str(body["format"]),
            target=str(body["target"]),
            filename=str(body["filename"]),
            size_bytes=int(body["size_bytes"]),
            sha256=str(body["sha256"]),
            signature=body.get("signature"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One model version of the registry (``ModelVersionPublic``)."""

    id: int
    task: str
    stage: str
    metrics: dict[str, float]
    artifacts: tuple[ArtifactInfo, ...]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ModelInfo:
        return cls(
            id=int(body["id"]),
            task=str(body["task"]),
            stage=str(body["stage"]),
            metrics={str(k): float(v) for k, v in (body.get("metrics") or {}).items()},
            artifacts=tuple(ArtifactInfo.from_json(a) for a in body.get("artifacts") or ()),
        )


def parse_model_version(raw: str) -> int:
    """``"7"`` → 7; anything else is refused with the fix."""
    text = raw.strip()
    if not re.fullmatch(r"[0-9]{1,10}", text) or not 0 < int(text) < 2**31:
        raise RegistryError(
            f"--model {raw!r} is not a model version number; pass the number the registry "
            "shows (GET /api/v1/models, or `fedfleet model register` prints it), e.g. --model 7"
        )
    return int(text)


def sign_digest(private_key: Any, sha256_hex: str) -> str:
    """Base64 Ed25519 signature of a file's 32-byte SHA-256 digest (the registry's form)."""
    return base64.b64encode(private_key.sign(bytes.fromhex(sha256_hex))).decode("ascii")


class RegistryClient:
    """Calls to one fleet's registry; use as a context manager (closes the connection)."""

    def __init__(self, connection: FleetConnection, *, timeout_s: float = TIMEOUT_S) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with the server extra
            raise RegistryError(
                'talking to the fleet needs httpx; install fedfleet["server"]'
            ) from exc
        self._httpx = httpx
        self.url = connection.url
        self._client = httpx.Client(
            base_url=connection.url + API_PREFIX,
            headers={"Authorization": f"Bearer {connection.token}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --- reading ----------------------------------------------------------------------

    def get_model(self, version: int) -> ModelInfo:
        """The model version with its artifacts; :class:`RegistryNotFoundError` if absent."""
        response = self._call("GET", f"/models/{version}", what=f"model version {version}")
        if response.status_code == 404:
            raise RegistryNotFoundError(
                f"model version {version} is not in the registry at {self.url}; list the "
                f"versions with GET {self.url}{API_PREFIX}/models"
            )
        self._check(response, what=f"reading model version {version}")
        return ModelInfo.from_json(response.json())

    def download(self, artifact: ArtifactInfo, dest: Path) -> Path:
        """Stream an artifact to ``dest`` (atomically), checking size and SHA-256.

        Nothing is left at ``dest`` (nor a temporary file beside it) when the transfer fails
        or the bytes do not hash to what the registry recorded.
        """
        dest = Path(dest)
        what = f"artifact {artifact.id} ({artifact.filename})"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with (
                os.fdopen(fd, "wb") as out,
                self._stream("GET", f"/artifacts/{artifact.id}/download", what=what) as response,
            ):
                if response.status_code == 404:
                    raise RegistryNotFoundError(
                        f"{what} is listed but its file is missing on the fleet at {self.url}; "
                        "upload it again"
                    )
                self._check(response, what=f"downloading {what}")
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise RegistryError(f"{what} is larger than {MAX_DOWNLOAD_BYTES} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != artifact.sha256:
                raise RegistryError(
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

    # --- writing ----------------------------------------------------------------------

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
        fields = {"format": format, "target": target, "sha256": sha256}
        if signature is not None:
            fields["signature"] = signature
        what = f"the {format} artifact for {target} of model version {version}"
        with Path(path).open("rb") as handle:
            response = self._call(
                "POST",
                f"/models/{version}/artifacts",
                what=what,
                data=fields,
                files={"file": (Path(path).name, handle, "application/octet-stream")},
            )
        if response.status_code == 409:
            raise RegistryError(
                f"model version {version} already has a {format} artifact for {target}; "
                "an artifact is never replaced: register a new model version for a new build"
            )
        if response.status_code == 404:
            raise RegistryNotFoundError(
                f"model version {version} is not in the registry at {self.url}; list the "
                f"versions with GET {self.url}{API_PREFIX}/models"
            )
        self._check(response, what=f"storing {what}")
        return ArtifactInfo.from_json(response.json())

    def get_json(self, path: str, *, what: str) -> dict[str, Any]:
        """GET a JSON document; :class:`RegistryNotFoundError` on 404."""
        response = self._call("GET", path, what=what)
        if response.status_code == 404:
            raise RegistryNotFoundError(f"{what}: not found at {self.url}{API_PREFIX}{path}")
        self._check(response, what=what)
        return dict(response.json())

    def post_json(self, path: str, body: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        """POST a JSON body and return the JSON answer (any non-2xx is a RegistryError)."""
        response = self._call("POST", path, what=what, json=dict(body))
        self._check(response, what=what)
        return dict(response.json())

    def send_json(
        self, method: str, path: str, body: Mapping[str, Any], *, what: str
    ) -> dict[str, Any]:
        """PUT/PATCH a JSON body and return the JSON answer."""
        response = self._call(method, path, what=what, json=dict(body))
        self._check(response, what=what)
        return dict(response.json())

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        try:
            return self._client.request(method, path, **kwargs)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    @contextmanager
    def _stream(self, method: str, path: str, *, what: str) -> Iterator[Any]:
        try:
            with self._client.stream(method, path) as response:
                yield response
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None

    def _unreachable(self, exc: Exception, what: str) -> RegistryError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RegistryError(
            f"cannot reach the fleet at {self.url} for {what} ({reason}); is `fedfleet fleet "
            "serve` running there? check --fleet-url or $FEDFLEET_URL"
        )

    def _check(self, response: Any, *, what: str) -> None:
        status = int(response.status_code)
        if 200 <= status < 300:
            return
        detail = _detail(response)
        if status == 401:
            reason = detail.split(" (", 1)[0]  # the fleet's own hint names a viewer token
            raise RegistryError(
                f"the fleet at {self.url} refused the token in ${TOKEN_ENV} (HTTP 401: "
                f"{reason}); export a valid one from `fedfleet fleet token create --role operator`"
            )
        if status == 403:
            raise RegistryError(
                f"the token in ${TOKEN_ENV} may not do this ({detail}); {what} needs an "
                "operator or admin token: `fedfleet fleet token create --role operator`"
            )
        raise RegistryError(f"the fleet refused {what} (HTTP {status}: {detail})")


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
