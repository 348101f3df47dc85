"""The design's dependency rules (../shared/DESIGN.md, "Dependency rules"), each checked twice.

- Statically: every ``import`` statement in a package's source, module-level or inside a
  function (lazy imports included), names only what the rule allows.
- In a fresh interpreter: importing every module of the package loads nothing the rule
  forbids, transitively (what a site or device install would actually execute).

Each rule protects a user: a device or hospital install carries no server code, deployment
never depends on the simulator, the coordinator speaks to sites only through the wire
contract and to the fleet only through its HTTP client.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "tasks",
    "coordinator",
    "edge_client",
    "strategies",
    "privacy",
    "fleet",
    "simulation",
    "firmware_images",
    "fedfleet",
)

# The device half of firmware_images: what a device installs to verify and run a bundle.
FIRMWARE_DEVICE_HALF = (
    "firmware_images.errors",
    "firmware_images.keys",
    "firmware_images.manifest",
    "firmware_images.bundle",
    "firmware_images.bundle_layout",
    "firmware_images.targets",
    "firmware_images.runtime",
)


@dataclass(frozen=True)
class Rule:
    """Modules matching ``scope`` may import from fedfleet only what ``allowed`` admits.

    ``allowed`` holds module prefixes: ``"fleet.client"`` admits ``fleet.client`` and its
    submodules; a package's own ``__init__`` is always admitted when a submodule is.
    """

    name: str
    scope: tuple[str, ...]  # module prefixes the rule applies to
    allowed: tuple[str, ...]  # fedfleet module prefixes they may import
    why: str


OWN = PACKAGES
MQTT_LOOP = "edge_client.mqtt_loop"
# What every package's command-line module may import from the root package: fail(),
# the exit codes, sub_app() and the shared options; and ending a child process tree on
# SIGINT/SIGTERM. The root command (fedfleet.cli) imports the packages, never back.
CLI_SUPPORT = "fedfleet.cli_support"
STOPPING = "fedfleet.stopping"
ROOT_SHARED = (CLI_SUPPORT, STOPPING)
# The admin half's own modules besides its subpackages (everything in fleet/ but fleet.ota
# and fleet.client's users' package).
FLEET_ADMIN_SHARED = tuple(
    f"fleet.{p.stem}" for p in sorted((ROOT / "fleet").glob("*.py")) if p.stem != "__init__"
)
RULES = (
    Rule(
        "tasks imports no other fedfleet package",
        scope=("tasks",),
        allowed=("tasks",),
        why="every package imports tasks; it must not pull anything in",
    ),
    Rule(
        "the wire contract is dependency-free",
        scope=("edge_client.protocol",),
        allowed=("edge_client.protocol",),
        why="coordinator, fleet and devices share it; it must carry no behaviour",
    ),
    Rule(
        "device-side code never imports server code",
        scope=("edge_client", *FIRMWARE_DEVICE_HALF),
        allowed=(
            "edge_client",
            "tasks",
            "privacy",
            "strategies",
            *FIRMWARE_DEVICE_HALF,
            *ROOT_SHARED,
        ),
        why="a device or hospital install carries no server code",
    ),
    Rule(
        "the coordinator uses only the wire contract of edge_client and the fleet's HTTP client",
        scope=("coordinator",),
        allowed=(
            "coordinator",
            "tasks",
            "privacy",
            "strategies",
            "firmware_images",
            "edge_client.protocol",
            "fleet.client",
            *ROOT_SHARED,
        ),
        why="deployment never depends on the simulator; the fleet is reached over HTTP only",
    ),
    Rule(
        "the fleet never imports the simulator, the coordinator or the site runtime",
        scope=("fleet",),
        # edge_client.mqtt_loop: the epoll loop for paho clients that the device agent and
        # the bridge share (paho's own loop stops serving sockets above fd 1023).
        allowed=(
            "fleet",
            "tasks",
            "firmware_images",
            "edge_client.protocol",
            MQTT_LOOP,
            *ROOT_SHARED,
        ),
        why="a fleet server runs no training and no simulation",
    ),
    Rule(
        "the fleet's admin app does not depend on its MQTT side",
        scope=("fleet.api", "fleet.crud", "fleet.models", "fleet.dashboard", "fleet.db"),
        allowed=(
            "fleet.api",
            "fleet.crud",
            "fleet.models",
            "fleet.dashboard",
            "fleet.db",
            *FLEET_ADMIN_SHARED,
            "tasks",
            "firmware_images",
            "edge_client.protocol",
        ),
        why="the API serves without a broker; fleet.ota builds on the admin half, not back",
    ),
    Rule(
        "the fleet's HTTP client carries no server code",
        scope=("fleet.client",),
        allowed=("fleet.client",),
        why="coordinators and image builders install it without the fleet's server",
    ),
    Rule(
        "the CLI support module imports no other fedfleet package",
        scope=ROOT_SHARED,
        allowed=ROOT_SHARED,  # and the root package's __init__, which imports nothing
        why="every package's CLI imports them, device-side ones included",
    ),
    Rule(
        "privacy and strategies are libraries the loops call",
        scope=("privacy", "strategies"),
        allowed=("privacy", "strategies", "tasks"),
        why="they must stay usable from any loop, and testable alone",
    ),
)

# Third-party packages a module of the scope must not load in a fresh interpreter.
HEAVY_SERVER = ("fastapi", "sqlmodel", "sqlalchemy", "alembic", "uvicorn", "starlette")
SERVER_EXTRAS = ("sqlmodel", "psycopg", "prometheus_client", "jinja2", "matplotlib", "ray")
FORBIDDEN_THIRD_PARTY = {
    "the fleet's HTTP client carries no server code": HEAVY_SERVER,
    # Only fedfleet's server extras: flwr itself (a site's SuperNode) depends on fastapi,
    # starlette, sqlalchemy, alembic and uvicorn, so a site has those installed anyway.
    "device-side code never imports server code": SERVER_EXTRAS,
    "the wire contract is dependency-free": ("torch", *HEAVY_SERVER),
    "the CLI support module imports no other fedfleet package": (
        "torch",
        "flwr",
        "numpy",
        "httpx",
        *HEAVY_SERVER,
    ),
}


def _admits(prefixes: tuple[str, ...], module: str) -> bool:
    for prefix in prefixes:
        if module == prefix or module.startswith(prefix + "."):
            return True
        if prefix.startswith(module + "."):  # the package __init__ of an allowed module
            return True
    return False


def _in_scope(rule: Rule, module: str) -> bool:
    return any(module == s or module.startswith(s + ".") for s in rule.scope)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.relative_to(ROOT).parts:
                continue  # alembic's scripts run inside alembic, loaded by path
            modules[_module_name(path)] = path
    return modules


MODULES = _all_modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every fedfleet module named by an import statement anywhere in ``path``."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pkg import sub` may name a submodule: count it as that module.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                names.add(candidate if candidate in MODULES else target)
    return {n for n in names if n.split(".")[0] in OWN}


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_import_statements_follow_the_rule(rule: Rule):
    # Prepare: the modules the rule covers, and what each names in an import statement.
    covered = {m: p for m, p in MODULES.items() if _in_scope(rule, m)}
    assert covered, f"rule {rule.name!r} covers no module: is its scope still right?"
    # Execute
    broken = {
        f"{module} imports {target}"
        for module, path in covered.items()
        for target in _imports(module, path)
        if not _admits(rule.allowed, target)
    }
    # Assert
    assert not broken, f"{rule.name} ({rule.why}):\n" + "\n".join(sorted(broken))


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_a_fresh_interpreter_loads_only_what_the_rule_allows(rule: Rule):
    # Prepare: every module in scope (fedfleet/cli mounts everything; it is the root).
    covered = sorted(m for m in MODULES if _in_scope(rule, m))
    # Execute
    loaded = _loaded_after_importing(covered)
    # Assert
    own = {m for m in loaded if m.split(".")[0] in OWN}
    leaked = {m for m in own if not _admits(rule.allowed, m)}
    assert not leaked, f"{rule.name} ({rule.why}): loaded {sorted(leaked)}"
    heavy = {m.split(".")[0] for m in loaded} & set(FORBIDDEN_THIRD_PARTY.get(rule.name, ()))
    assert not heavy, f"{rule.name}: loaded {sorted(heavy)}"


def test_only_the_root_command_imports_the_root_command():
    # Prepare: what every module but the root command names from the root package.
    root = {
        f"{module} imports {target}"
        for module, path in MODULES.items()
        if module != "fedfleet.cli"
        for target in _imports(module, path)
        if target.split(".")[0] == "fedfleet"
    }
    # Execute: the imports other than the root package itself and the CLI support module.
    broken = {line for line in root if line.split(" imports ")[1] not in ("fedfleet", *ROOT_SHARED)}
    # Assert: packages take fail()/sub_app() from cli_support; only fedfleet.cli mounts them.
    assert any(line.endswith(CLI_SUPPORT) for line in root), "no CLI uses fedfleet.cli_support?"
    assert not broken, "only fedfleet.cli may import the root command:\n" + "\n".join(
        sorted(broken)
    )


def test_the_checker_sees_a_forbidden_import(tmp_path):
    # A rule that forbids what a module really imports is reported (the check can fail).
    rule = Rule("probe", scope=("coordinator.app",), allowed=("coordinator",), why="probe")
    path = MODULES["coordinator.app"]
    targets = _imports("coordinator.app", path)
    assert any(not _admits(rule.allowed, t) for t in targets), targets
