"""``site.toml``: one file that says who a site is, whom it trusts and what it allows.

Parsed strictly: an unknown table or key, a wrong type or a missing file is a
``ValueError`` that names the key and says how to fix it. Relative paths are relative
to the folder of ``site.toml``. See :data:`SITE_TOML_TEMPLATE` for every key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import tomllib

LEDGER_FILE = "privacy_ledger.sqlite"  # the privacy ledger's file in state-dir (issue 4)
DataFormat = Literal["csv", "parquet", "npz"]
ColumnType = Literal["float", "int", "bool"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
COLUMN_TYPES: tuple[str, ...] = get_args(ColumnType)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

SITE_TOML_TEMPLATE = """\
# fedfleet site configuration (`fedfleet site join --config site.toml`).
# Relative paths are relative to this file's folder.

[site]
name = "{name}"          # lowercase letters, digits, '.', '_' or '-'
state-dir = "state"      # audit log and privacy ledger live here

[coordinator]
address = "127.0.0.1:9092"   # the SuperLink's Fleet API, host:port (TLS)
ca-cert = "ca.crt"           # the coordinator's root certificate (from the operator)

[keys]                       # made by `fedfleet site init`; send {name}.pub to the operator
private-key = "{name}.key"
public-key = "{name}.pub"
# audit-key = "{name}.audit-key"   # the audit log's HMAC key and genesis id (made when the
                                   # log starts; 0600; must be outside state-dir; back it up)

[supernode]
port = 9094                  # local ClientApp API port; distinct per site on one machine

[data]
path = "data/records.csv"    # .csv, .parquet or .npz (arrays x and y)
label = "label"              # the label column (csv/parquet)
# format = "csv"             # default: from the file suffix

[data.schema]                # every feature column and its type: float | int | bool
# age = "int"
# mean-radius = "float"

[policy]
allowed-tasks = ["breast-cancer-mlp"]   # the site refuses any other task
epsilon = 8.0                # total privacy budget ε this site will ever spend
delta = 1e-5                 # δ of that budget
require-dp = true            # train every round with this site's own DP-SGD, whatever the run says
dp-noise-multiplier = 1.0    # this site's DP-SGD noise (std / clip) when require-dp
dp-clip = 1.0                # this site's per-sample gradient L2 bound when require-dp
require-secagg = false       # refuse rounds whose updates are not securely aggregated
min-secagg-sites = 2         # refuse a secure-aggregation round with fewer participants

[energy]                     # measure each training's energy and CO2 with codecarbon
codecarbon = false           # needs `pip install fedfleet[energy]`
country-iso-code = "DEU"     # the grid whose average intensity codecarbon applies (ISO 3166 alpha-3)

[code]                       # what code this site runs; anything else is refused unstarted
fedfleet-app = true          # fedfleet's own ClientApp (edge_client.app:app) as installed here
fab-sha256 = []              # other Flower apps, by the SHA-256 of their .fab (64 hex digits)
"""

_ALLOWED: dict[str, set[str]] = {
    "site": {"name", "state-dir"},
    "coordinator": {"address", "ca-cert"},
    "keys": {"private-key", "public-key", "audit-key"},
    "supernode": {"port"},
    "data": {"path", "label", "format", "schema"},
    "policy": {
        "allowed-tasks",
        "epsilon",
        "delta",
        "require-dp",
        "dp-noise-multiplier",
        "dp-clip",
        "require-secagg",
        "min-secagg-sites",
    },
    "code": {"fedfleet-app", "fab-sha256"},
    "energy": {"codecarbon", "country-iso-code"},
}
FEDFLEET_CLIENTAPP = "edge_client.app:app"  # the component of fedfleet's own ClientApp
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DataSpec:
    """Where the site's records are and what their columns must be."""

    path: Path
    format: DataFormat
    label: str
    schema: dict[str, ColumnType]


@dataclass(frozen=True)
class SitePolicy:
    """What the site agrees to: tasks it trains and the privacy budget (ε, δ) it spends.

    ``require_dp``: every training runs the site's own DP-SGD (noise multiplier
    ``dp_noise_multiplier`` = noise std / ``dp_clip``, the per-sample gradient L2
    bound) and is charged to its ledger, whatever the run config says.
    ``require_secagg``: only masked (secure-aggregation) updates leave, in rounds of at
    least ``min_secagg_sites`` participants.
    """

    allowed_tasks: tuple[str, ...]
    epsilon: float
    delta: float
    require_dp: bool
    dp_noise_multiplier: float = 1.0
    dp_clip: float = 1.0
    require_secagg: bool = False
    min_secagg_sites: int = 2


@dataclass(frozen=True)
class CodePins:
    """What code the site runs (``[code]``): fedfleet's own ClientApp as installed here
    (``fedfleet_app``) and Flower apps pinned by the SHA-256 of their FAB."""

    fedfleet_app: bool = True
    fab_sha256: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EnergySettings:
    """``[energy]``: measure each training with codecarbon's offline tracker, at the
    average intensity of ``country_iso_code``'s grid (ISO 3166 alpha-3)."""

    codecarbon: bool = False
    country_iso_code: str = "DEU"


@dataclass(frozen=True)
class SiteConfig:
    """A parsed ``site.toml`` (paths resolved)."""

    source: Path
    name: str
    state_dir: Path
    coordinator_address: str
    ca_cert: Path
    private_key: Path
    public_key: Path
    audit_key: Path  # the audit log's key file (edge_client.audit), outside state_dir
    runtime_port: int
    data: DataSpec
    policy: SitePolicy
    code: CodePins = CodePins()
    energy: EnergySettings = EnergySettings()

    @classmethod
    def load(cls, path: Path) -> SiteConfig:
        """Read and validate ``path``; ValueError with the key and the fix otherwise."""
        if not path.is_file():
            raise ValueError(
                f"site config {path} does not exist; create one with `fedfleet site init`"
            )
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(doc, source=path.resolve())

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, source: Path) -> SiteConfig:
        base = source.parent
        _check_tables(doc, source.name)
        get = _Getter(doc, source.name)
        name = get.get_str("site", "name")
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"{source.name}: site.name {name!r} must be lowercase letters, digits, "
                "'.', '_' or '-' (at most 63)"
            )
        address = get.get_str("coordinator", "address")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{source.name}: coordinator.address {address!r} must be host:port, "
                "e.g. 127.0.0.1:9092"
            )
        runtime_port = get.get_int("supernode", "port", default=9094)
        if not 0 < runtime_port < 65536:
            raise ValueError(f"{source.name}: supernode.port must be between 1 and 65535")
        data = _data_spec(doc, get, base=base, source=source.name)
        tasks = get.get_list("policy", "allowed-tasks")
        epsilon = get.get_float("policy", "epsilon")
        delta = get.get_float("policy", "delta")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"{source.name}: policy.epsilon must be a positive number")
        if not 0 < delta < 1:
            raise ValueError(f"{source.name}: policy.delta must be between 0 and 1, e.g. 1e-5")
        noise = get.get_float("policy", "dp-noise-multiplier", default=1.0)
        clip = get.get_float("policy", "dp-clip", default=1.0)
        for key, value in (("dp-noise-multiplier", noise), ("dp-clip", clip)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{source.name}: policy.{key} must be a positive number")
        min_secagg = get.get_int("policy", "min-secagg-sites", default=2)
        if min_secagg < 2:
            raise ValueError(f"{source.name}: policy.min-secagg-sites must be at least 2")
        pins = get.get_list("code", "fab-sha256", default=[])
        for pin in pins:
            if not _SHA256_HEX.match(pin):
                raise ValueError(
                    f"{source.name}: code.fab-sha256 entry {pin!r} is not a SHA-256; give "
                    "64 lowercase hex digits (`sha256sum app.fab`)"
                )
        state_dir, private_key, audit_key = _key_paths(
            doc, get, base=base, name=name, source=source
        )
        return cls(
            source=source,
            name=name,
            state_dir=state_dir,
            coordinator_address=address,
            ca_cert=_existing(
                base / get.get_str("coordinator", "ca-cert"), "coordinator.ca-cert", source
            ),
            private_key=private_key,
            public_key=base / get.get_str("keys", "public-key", default=f"{name}.pub"),
            audit_key=audit_key,
            runtime_port=runtime_port,
            data=data,
            policy=SitePolicy(
                allowed_tasks=tuple(tasks),
                epsilon=epsilon,
                delta=delta,
                require_dp=get.get_bool("policy", "require-dp", default=True),
                dp_noise_multiplier=noise,
                dp_clip=clip,
                require_secagg=get.get_bool("policy", "require-secagg", default=False),
                min_secagg_sites=min_secagg,
            ),
            code=CodePins(
                fedfleet_app=get.get_bool("code", "fedfleet-app", default=True),
                fab_sha256=frozenset(pins),
            ),
            energy=_energy(get, source=source.name),
        )


def _energy(get: _Getter, *, source: str) -> EnergySettings:
    country = get.get_str("energy", "country-iso-code", default="DEU")
    if not re.fullmatch(r"[A-Z]{3}", country):
        raise ValueError(
            f"{source}: energy.country-iso-code {country!r} must be an ISO 3166 alpha-3 "
            "code such as DEU or FRA"
        )
    return EnergySettings(
        codecarbon=get.get_bool("energy", "codecarbon", default=False), country_iso_code=country
    )


def _key_paths(
    doc: dict[str, Any], get: _Getter, *, base: Path, name: str, source: Path
) -> tuple[Path, Path, Path]:
    """The state folder, the node's private key and the audit log's HMAC key file.

    The audit key lives outside the state folder: someone who can rewrite the log must
    not also hold the key that authenticates it (edge_client/audit.py).
    """
    state_dir = base / get.get_str("site", "state-dir", default="state")
    private_key = _existing(base / get.get_str("keys", "private-key"), "keys.private-key", source)
    audit_key = (
        base / get.get_str("keys", "audit-key")
        if "audit-key" in doc.get("keys", {})
        else private_key.parent / f"{name}.audit-key"
    )
    if audit_key.resolve().is_relative_to(state_dir.resolve()):
        raise ValueError(
            f"{source.name}: keys.audit-key {audit_key} is inside site.state-dir; keep the "
            "audit key out of the state folder (e.g. beside the private key)"
        )
    return state_dir, private_key, audit_key


def _check_tables(doc: dict[str, Any], source: str) -> None:
    """Refuse an unknown table or key, or a table that is not one."""
    for table, value in doc.items():
        if table not in _ALLOWED:
            raise ValueError(
                f"{source}: unknown table [{table}]; expected one of {sorted(_ALLOWED)}"
            )
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {table} must be a table ([{table}])")
        unknown = set(value) - _ALLOWED[table]
        if unknown:
            raise ValueError(
                f"{source}: unknown key {table}.{sorted(unknown)[0]}; "
                f"allowed keys are {sorted(_ALLOWED[table])}"
            )


def _data_spec(doc: dict[str, Any], get: _Getter, *, base: Path, source: str) -> DataSpec:
    """The ``[data]`` table: file, format, label and the feature columns' types."""
    data_path = base / get.get_str("data", "path")
    if "format" in doc.get("data", {}):
        fmt = get.get_str("data", "format")
    else:
        fmt = _format_from_suffix(data_path, source)
    if fmt not in DATA_FORMATS:
        raise ValueError(f"{source}: data.format {fmt!r} is not one of {', '.join(DATA_FORMATS)}")
    schema_raw = doc.get("data", {}).get("schema", {})
    if not isinstance(schema_raw, dict):
        raise ValueError(f"{source}: data.schema must be a table of column = type")
    schema: dict[str, ColumnType] = {}
    for column, ctype in schema_raw.items():
        if ctype not in COLUMN_TYPES:
            raise ValueError(
                f"{source}: data.schema.{column} = {ctype!r}; use one of {', '.join(COLUMN_TYPES)}"
            )
        schema[column] = ctype
    label = get.get_str("data", "label", default="label")
    if fmt != "npz" and not schema:
        raise ValueError(
            f"{source}: [data.schema] lists no feature columns; add "
            '`column = "float"` for each feature of the records'
        )
    if label in schema:
        raise ValueError(f"{source}: the label column {label!r} is also in data.schema")
    return DataSpec(path=data_path, format=fmt, label=label, schema=schema)  # type: ignore[arg-type]


def _format_from_suffix(path: Path, source: str) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in DATA_FORMATS:
        return suffix
    raise ValueError(
        f"{source}: cannot tell the format of {path.name}; set data.format to one of "
        f"{', '.join(DATA_FORMATS)}"
    )


def _existing(path: Path, key: str, source: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{source.name}: {key} {path} does not exist; fix the path")
    return path


class _Getter:
    """Typed access to ``doc[table][key]`` with errors that name the key."""

    _MISSING = object()

    def __init__(self, doc: dict[str, Any], source: str) -> None:
        self.doc, self.source = doc, source

    def _get(self, table: str, key: str, default: Any) -> Any:
        value = self.doc.get(table, {}).get(key, default)
        if value is self._MISSING:
            raise ValueError(f"{self.source}: missing {table}.{key}; see `fedfleet site init`")
        return value

    def _wrong(self, table: str, key: str, value: Any, kind: str) -> ValueError:
        return ValueError(f"{self.source}: {table}.{key} = {value!r} must be {kind}")

    def get_str(self, table: str, key: str, default: Any = _MISSING) -> str:
        value = self._get(table, key, default)
        if not isinstance(value, str) or not value:
            raise self._wrong(table, key, value, "a non-empty string")
        return value

    def get_int(self, table: str, key: str, default: Any = _MISSING) -> int:
        value = self._get(table, key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(table, key, value, "an integer")
        return value

    def get_float(self, table: str, key: str, default: Any = _MISSING) -> float:
        value = self._get(table, key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(table, key, value, "a number")
        return float(value)

    def get_bool(self, table: str, key: str, default: Any = _MISSING) -> bool:
        value = self._get(table, key, default)
        if not isinstance(value, bool):
            raise self._wrong(table, key, value, "true or false")
        return value

    def get_list(self, table: str, key: str, default: Any = _MISSING) -> list[str]:
        value = self._get(table, key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._wrong(table, key, value, "a list of strings")
        return list(value)
