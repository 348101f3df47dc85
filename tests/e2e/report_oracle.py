"""Cross-check every value of a ``fedfleet report`` page against its source.

The page names each value's source in ``data-src`` and its exact value in ``data-value``
(coordinator/report/render.py). This module reads each source again on its own — the
metrics.json file, the ledger's SQLite rows (ε recomputed from the raw mechanisms), the
site's audit log through ``edge_client.audit.verify_log`` and its lines, the fleet API
over plain httpx, ``importlib.metadata`` and the files' bytes — and compares. It shares
no code with the report beyond the names of the sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import json
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from privacy.dp.accounting import Mechanism, epsilon


@dataclass
class Value:
    """One element carrying ``data-src``: its source, exact value and shown text."""

    src: str
    value: Any
    text: str


@dataclass
class Page:
    values: list[Value] = field(default_factory=list)
    unsourced_numbers: list[str] = field(default_factory=list)
    embedded: dict[str, Any] | None = None


class _Parser(HTMLParser):
    """Collects data-src elements, the embedded JSON, and number-only cells without a source."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._open: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and attributes.get("id") == "report-data":
            self._script = []
            return
        if tag in ("td", "dd", "span", "p", "th"):
            self._open.append((tag, attributes, []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.page.embedded = json.loads("".join(self._script))
            self._script = None
            return
        if not self._open or self._open[-1][0] != tag:
            return
        _, attributes, chunks = self._open.pop()
        text = "".join(chunks).strip()
        if "data-src" in attributes:
            raw = attributes.get("data-value")
            self.page.values.append(
                Value(str(attributes["data-src"]), json.loads(raw or "null"), text)
            )
            if self._open:  # the parent shows this text too; it is sourced
                self._open[-1][2].append("\0")
            return
        if tag in ("td", "dd") and re.fullmatch(r"-?[0-9][0-9.,e+\-]*", text):
            self.page.unsourced_numbers.append(text)
        if self._open:
            self._open[-1][2].append(text)

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)
        elif self._open:
            self._open[-1][2].append(data)


def parse(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


def pointer(doc: Any, path: str) -> Any:
    """RFC 6901 JSON pointer; also ``count:@/p`` (list length), ``count:F=V@/p`` (items
    with field F equal to V) and ``field:F@/p`` (field F of each item)."""
    if path.startswith(("count:", "field:")):
        how, _, where = path.partition("@")
        items = pointer(doc, where)
        kind, _, arg = how.partition(":")
        if kind == "field":
            return [item[arg] for item in items]
        if not arg:
            return len(items)
        name, _, wanted = arg.partition("=")
        return sum(str(item.get(name)) == wanted for item in items)
    for token in path.lstrip("/").split("/") if path.strip("/") else []:
        token = token.replace("~1", "/").replace("~0", "~")
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def ledger_facts(path: Path, site: str, task: str) -> dict[str, Any]:
    """A site's ledger row for ``task``, from the SQLite rows (ε composed here by RDP)."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM trainings WHERE site = ? AND task = ? ORDER BY id", (site, task)
        ).fetchall()
    latest = rows[-1]
    counted = [r for r in rows if r["status"] in ("reserved", "completed")]
    mechanisms = [Mechanism(r["sample_rate"], r["noise_multiplier"], r["steps"]) for r in counted]
    spent = epsilon(mechanisms, delta=latest["delta"], accountant="rdp")
    budget = latest["budget_epsilon"]
    return {
        "completed": sum(r["status"] == "completed" for r in rows),
        "refused": sum(r["status"] == "refused" for r in rows),
        "delta": latest["delta"],
        "spent": spent,
        "budget_epsilon": budget,
        "remaining": None if budget is None else max(0.0, budget - spent),
        "rounds": sorted({r["server_round"] for r in rows if r["status"] == "completed"}),
    }


def software_fact(name: str, what: str) -> Any:
    # The installed distribution is the one with a RECORD; a checkout's *.egg-info (no
    # RECORD) comes first on the path when the tests run from the checkout.
    dist = next(
        (d for d in metadata.distributions(name=name) if d.read_text("RECORD")),
        metadata.distribution(name),
    )
    if what == "version":
        return dist.version
    return hashlib.sha256((dist.read_text("RECORD") or "").encode()).hexdigest()


def source_sha256(root: Path) -> str:
    packages = sorted(p.parent.name for p in root.glob("*/__init__.py") if p.parent.name != "tests")
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            own = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + own.encode() + b"\n")
    return digest.hexdigest()


def same(shown: Any, source: Any) -> bool:
    if isinstance(source, float) or isinstance(shown, float):
        if shown is None or source is None:
            return shown is source
        return math.isclose(float(shown), float(source), rel_tol=1e-9, abs_tol=1e-12)
    return bool(shown == source)


def text_shows(value: Any, text: str) -> bool:
    """The shown text is the value, rounded as displayed."""
    if value is None:
        return text == "–"
    if isinstance(value, bool):
        return text == ("yes" if value else "no")
    if isinstance(value, list):
        return text == (", ".join(str(v) for v in value) or "none")
    if isinstance(value, int | float):
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
        tolerance = 0.5 * 10**-decimals + 1e-12 if "e" not in text else abs(float(value)) * 1e-3
        return abs(float(text) - float(value)) <= tolerance
    return text == str(value)


Resolver = Callable[[str], Any]


def check_page(html: str, resolvers: dict[str, Resolver]) -> tuple[Page, list[str]]:
    """Every ``data-src`` value against ``resolvers[namespace](rest)``; the mismatches."""
    page = parse(html)
    problems = []
    for item in page.values:
        namespace, _, rest = item.src.partition(":")
        if namespace not in resolvers:
            problems.append(f"{item.src}: no oracle for namespace {namespace!r}")
            continue
        source = resolvers[namespace](rest)
        if not same(item.value, source):
            problems.append(f"{item.src}: report {item.value!r}, source {source!r}")
        if not text_shows(item.value, item.text):
            problems.append(f"{item.src}: shows {item.text!r} for {item.value!r}")
    problems += [f"a number without a source: {t!r}" for t in page.unsourced_numbers]
    return page, problems


def site_resolver(configs: list[Path], *, flower_runs: list[int]) -> Resolver:
    """``site:NAME/...`` from each site's own files: the verdict of ``verify_log``, the
    rounds of its audit lines (train replies of ``flower_runs``; none shown for a log
    that fails verification), and its ledger's rows."""
    from edge_client.audit import verify_log
    from edge_client.site_config import SiteConfig

    by_name = {config.name: config for config in map(SiteConfig.load, configs)}

    def resolve(rest: str) -> Any:
        name, kind, *more = rest.split("/")
        site = by_name[name]
        verdict = verify_log(site.state_dir, key_file=site.audit_key)
        if kind == "verdict":
            return dataclasses.asdict(verdict)[more[0]]
        if kind == "rounds":
            if not verdict.ok:
                return None
            lines = (site.state_dir / "audit.jsonl").read_text().splitlines()
            entries = [json.loads(line) for line in lines if line.strip()]
            return sorted(
                {
                    e["round"]
                    for e in entries
                    if e.get("run") in flower_runs
                    and e["kind"] == "reply"
                    and str(e["type"]).startswith("train")
                }
            )
        task, name_of_field = more
        return ledger_facts(site.state_dir / "privacy_ledger.sqlite", name, task)[name_of_field]

    return resolve


def run_resolvers(run: Path, root: Path) -> dict[str, Resolver]:
    """``metrics:``, ``ledger:``, ``software:`` and ``run:`` for the run folder ``run``
    (``root``: the checkout whose fedfleet sources the report hashed)."""
    metrics = json.loads((run / "metrics.json").read_text())
    ledger = run / "privacy_ledger.sqlite"

    def from_ledger(rest: str) -> Any:
        site, task, name = rest.split("/")
        return ledger_facts(ledger, site, task)[name]

    def from_software(rest: str) -> Any:
        if rest == "source_sha256":
            return source_sha256(root)
        name, what = rest.split("/")
        return software_fact(name, what)

    def from_run(rest: str) -> Any:
        target = {"model_sha256": run / "model.pt", "app_sha256": run / "app" / "pyproject.toml"}
        path = target[rest]
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    return {
        "metrics": lambda rest: pointer(metrics, rest),
        "ledger": from_ledger,
        "software": from_software,
        "run": from_run,
    }
