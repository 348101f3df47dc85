"""The report as one self-contained HTML page (inline CSS and SVG, no external asset).

Every value shown from a source is an element with ``data-src`` — where it was read:
``metrics:/json/pointer`` (the run's metrics.json), ``ledger:SITE/TASK/FIELD`` (the run
folder's privacy ledger), ``site:SITE/verdict/FIELD``, ``site:SITE/budget/TASK/FIELD``,
``site:SITE/rounds`` (the site's own commands), ``fleet:/api/path#/json/pointer`` (the
fleet API, ``#count:FIELD=VALUE@/pointer`` for a count over a list), ``software:NAME/FIELD``,
``run:FIELD`` (files of the run folder) — and ``data-value``, its exact value as JSON.
The evidence itself is embedded as JSON in ``<script id="report-data">``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Sequence
from typing import Any

NOT_MEASURED = "not measured"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2733;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #2b6cb0;padding-bottom:.2rem;
margin-top:2rem;font-size:1.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}
th,td{border:1px solid #cbd5e0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#edf2f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
.ok{color:#22543d;background:#c6f6d5;padding:0 .4rem;border-radius:3px}
.bad{color:#742a2a;background:#fed7d7;padding:0 .4rem;border-radius:3px}
.absent{color:#718096;font-style:italic}.meta{color:#4a5568}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}
svg.chart{width:100%;max-width:640px;height:auto;border:1px solid #e2e8f0}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table{break-inside:auto}}
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(_fmt(v, spec) for v in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, int | float) and spec:
        return format(value, spec)
    return str(value)


def cell(value: Any, src: str, spec: str = "", *, tag: str = "td") -> str:
    """One value with its source: ``<td class="num" data-src=... data-value=...>``."""
    kind = "num" if isinstance(value, int | float) and not isinstance(value, bool) else "val"
    return (
        f'<{tag} class="{kind}" data-src="{_esc(src)}" '
        f"data-value='{_esc(json.dumps(value))}'>{_esc(_fmt(value, spec))}</{tag}>"
    )


def _table(headers: Sequence[str], rows: Sequence[str], *, ident: str) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    return (
        f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _absent(text: str, ident: str) -> str:
    return f'<p class="absent" id="{ident}">{_esc(text)}</p>'


def _line_chart(points: list[tuple[int, float]], *, title: str, ident: str) -> str:
    """An inline SVG line chart of (round, value); values are drawn, not cross-checked
    (the table beside it holds the numbers)."""
    if not points:
        return ""
    width, height, pad = 640, 240, 36
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    lo, hi = min(0.0, min(ys)), max(1.0, max(ys))
    span_x = max(1, max(xs) - min(xs))

    def x(v: int) -> float:
        return pad + (v - min(xs)) / span_x * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad - (v - lo) / (hi - lo or 1) * (height - 2 * pad)

    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b):.1f}" for i, (a, b) in enumerate(points)
    )
    dots = "".join(
        f'<circle class="point" cx="{x(a):.1f}" cy="{y(b):.1f}" r="3.5" fill="#2b6cb0"/>'
        for a, b in points
    )
    ticks = "".join(
        f'<text x="{x(a):.1f}" y="{height - 12}" font-size="11" text-anchor="middle">{a}</text>'
        for a in xs
    )
    return (
        f'<svg id="{ident}" class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_esc(title)}</title>'
        f'<text x="{pad}" y="20" font-size="13" font-weight="600">{_esc(title)}</text>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#a0aec0"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" '
        f'stroke="#a0aec0"/><text x="4" y="{y(hi) + 4:.1f}" font-size="11">{hi:g}</text>'
        f'<text x="4" y="{y(lo) + 4:.1f}" font-size="11">{lo:g}</text>'
        f'<path d="{path}" fill="none" stroke="#2b6cb0" stroke-width="2"/>{dots}{ticks}</svg>'
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# --- sections ---------------------------------------------------------------------------

_ROUND_COLUMNS = (
    ("round", "round", ""),
    ("accuracy", "accuracy", ".4f"),
    ("loss", "loss", ".4f"),
    ("clients", "clients", ""),
    ("selected", "selected", ""),
    ("failures", "failures", ""),
    ("duration_s", "seconds", ".2f"),
    ("epsilon", "ε", ".3f"),
    ("energy_kwh", "energy kWh", ".6f"),
    ("co2_g", "CO₂ g", ".3f"),
)


def _summary(doc: dict[str, Any]) -> str:
    config = doc["run"]["config"]
    rounds = doc["run"]["rounds"]
    items = [
        ("run", f"<code>{_esc(doc['run']['id'])}</code>"),
        ("folder", f"<code>{_esc(doc['run']['path'])}</code>"),
        ("task", cell(config.get("task"), "metrics:/config/task", tag="span")),
        ("strategy", cell(config.get("strategy"), "metrics:/config/strategy", tag="span")),
        ("rounds completed", cell(len(rounds), "metrics:count:@/rounds", tag="span")),
        (
            "final accuracy",
            cell(doc["run"]["final_accuracy"], "metrics:/final_accuracy", ".4f", tag="span"),
        ),
    ]
    body = "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<section id="summary"><dl>{body}</dl></section>'


def _rounds(doc: dict[str, Any]) -> str:
    rounds = doc["run"]["rounds"]
    present = [c for c in _ROUND_COLUMNS if any(c[0] in r for r in rounds)]
    rows = []
    for i, row in enumerate(rounds):
        cells = "".join(
            cell(row[key], f"metrics:/rounds/{i}/{key}", spec) if key in row else "<td>–</td>"
            for key, _, spec in present
        )
        rows.append(f"<tr>{cells}</tr>")
    points = [
        (int(r["round"]), float(r["accuracy"]))
        for r in rounds
        if _finite(r.get("accuracy")) is not None
    ]
    chart = _line_chart(points, title="accuracy per round", ident="accuracy-chart")
    table = _table([c[1] for c in present], rows, ident="rounds")
    return f'<section><h2 id="rounds-h">Rounds</h2>{chart}{table}</section>'


def _participants(doc: dict[str, Any]) -> str:
    rows = []
    for row in doc["ledger"]:
        rows.append(
            f"<tr><td>{_esc(row['site'])}</td><td>privacy ledger</td>"
            + cell(row["rounds"], f"ledger:{row['site']}/{row['task']}/rounds")
            + "</tr>"
        )
    for site in doc["sites"]:
        source = "site audit log"
        if site["rounds"] is None:
            source += " (failed verification: its rounds are not shown)"
        rows.append(
            f"<tr><td>{_esc(site['site'])}</td><td>{source}</td>"
            + cell(site["rounds"], f"site:{site['site']}/rounds")
            + "</tr>"
        )
    if not rows:
        text = (
            "Participants' identities are not recorded in this run folder (no privacy "
            "ledger, no --site given); the rounds table counts who answered."
        )
        return f"<section><h2>Participants</h2>{_absent(text, 'participants')}</section>"
    table = _table(["participant", "source", "rounds trained"], rows, ident="participants")
    return f"<section><h2>Participants</h2>{table}</section>"


_DP_KEYS = ("dp", "dp-epsilon", "dp-delta", "dp-clip", "dp-noise-multiplier", "dp-accountant")


def _config_list(config: dict[str, Any], keys: Sequence[str], ident: str) -> str:
    items = "".join(
        f"<dt>{_esc(key)}</dt><dd>{cell(config[key], f'metrics:/config/{key}', tag='span')}</dd>"
        for key in keys
        if key in config
    )
    return f'<dl id="{ident}">{items}</dl>' if items else ""


def _privacy(doc: dict[str, Any]) -> str:
    config = doc["run"]["config"]
    parts = [_config_list(config, _DP_KEYS, "dp-config")]
    rows = []
    for row in doc["ledger"]:
        base = f"ledger:{row['site']}/{row['task']}"
        rows.append(_budget_row(row, base, "run folder's ledger"))
    for site in doc["sites"]:
        for row in site["budget"]:
            rows.append(
                _budget_row(row, f"site:{site['site']}/budget/{row['task']}", "site's ledger")
            )
    parts.append(_run_accounting(doc))
    if rows:
        headers = ["site", "task", "source", "trainings", "refused", "δ", "ε spent", "budget ε"]
        parts.append(_table([*headers, "ε left"], rows, ident="budgets"))
    else:
        parts.append(
            _absent(
                "No privacy ledger: the run trained without local DP, or no site's ledger "
                "was given (--site site.toml).",
                "budgets",
            )
        )
    return f"<section><h2>Differential privacy: ε per site against its budget</h2>{''.join(parts)}</section>"


def _run_accounting(doc: dict[str, Any]) -> str:
    """The run's own ε (central or distributed DP: per client, after the last round that
    recorded one) against its target ``dp-epsilon``; empty when no round recorded ε."""
    rounds = doc["run"]["rounds"]
    last = next((i for i in range(len(rounds) - 1, -1, -1) if "epsilon" in rounds[i]), None)
    if last is None:
        return ""
    config = doc["run"]["config"]
    target = ""
    if "dp-epsilon" in config:
        target = " against the target " + cell(
            config["dp-epsilon"], "metrics:/config/dp-epsilon", "g", tag="span"
        )
    return (
        '<p id="run-accounting">The run\'s own accounting (metrics.json): ε '
        + cell(rounds[last]["epsilon"], f"metrics:/rounds/{last}/epsilon", ".4f", tag="span")
        + " after round "
        + cell(rounds[last]["round"], f"metrics:/rounds/{last}/round", tag="span")
        + target
        + ".</p>"
    )


def _budget_row(row: dict[str, Any], base: str, source: str) -> str:
    return (
        f"<tr><td>{_esc(row['site'])}</td><td>{_esc(row['task'])}</td><td>{source}</td>"
        + cell(row["completed"], f"{base}/completed")
        + cell(row["refused"], f"{base}/refused")
        + cell(row["delta"], f"{base}/delta", "g")
        + cell(row["spent"], f"{base}/spent", ".4f")
        + cell(row["budget_epsilon"], f"{base}/budget_epsilon", "g")
        + cell(row["remaining"], f"{base}/remaining", ".4f")
        + "</tr>"
    )


_SECAGG_KEYS = ("secagg", "secagg-degree", "secagg-threshold", "secagg-clip", "secagg-bits")
_SECAGG_ROUND = (
    ("secagg_survivors", "survivors"),
    ("secagg_dropped_setup", "dropped at setup"),
    ("secagg_dropped_input", "dropped before input"),
    ("secagg_modulus_bits", "modulus bits"),
    ("secagg_clipped_fraction", "clipped fraction"),
)


def _secagg(doc: dict[str, Any]) -> str:
    config = doc["run"]["config"]
    settings = _config_list(config, _SECAGG_KEYS, "secagg-config")
    if not settings:
        settings = _absent("The run's config names no secure-aggregation setting.", "secagg-config")
    rows = []
    for i, row in enumerate(doc["run"]["rounds"]):
        if not any(key in row for key, _ in _SECAGG_ROUND):
            continue
        cells = cell(row["round"], f"metrics:/rounds/{i}/round") + "".join(
            cell(row[key], f"metrics:/rounds/{i}/{key}", "g") if key in row else "<td>–</td>"
            for key, _ in _SECAGG_ROUND
        )
        rows.append(f"<tr>{cells}</tr>")
    table = (
        _table(["round", *(label for _, label in _SECAGG_ROUND)], rows, ident="secagg-rounds")
        if rows
        else ""
    )
    return f"<section><h2>Secure aggregation</h2>{settings}{table}</section>"


_FAIRNESS_KEYS = (
    ("worst_group_accuracy", "worst-group accuracy", ".4f"),
    ("worst_decile_accuracy", "worst-decile accuracy", ".4f"),
    ("accuracy_std", "accuracy std", ".4f"),
    ("max_gap", "largest gap", ".4f"),
    ("demographic_parity_difference", "demographic-parity difference", ".4f"),
    ("equalized_odds_difference", "equalized-odds difference", ".4f"),
)


def _fairness(doc: dict[str, Any]) -> str:
    fairness = doc["run"].get("fairness")
    if not isinstance(fairness, dict):
        text = f"Fairness: {NOT_MEASURED} (metrics.json has no 'fairness' section)."
        return f"<section><h2>Fairness across groups</h2>{_absent(text, 'fairness')}</section>"
    items = [
        ("grouped by", cell(fairness.get("group_by"), "metrics:/fairness/group_by", tag="span"))
    ]
    if "sensitive_attribute" in fairness:
        src = "metrics:/fairness/sensitive_attribute"
        items.append(
            ("sensitive attribute", cell(fairness["sensitive_attribute"], src, tag="span"))
        )
    items += [
        (label, cell(fairness[key], f"metrics:/fairness/{key}", spec, tag="span"))
        for key, label, spec in _FAIRNESS_KEYS
        if key in fairness
    ]
    summary = "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    groups = [
        f"<tr><td>{_esc(name)}</td>"
        + cell(group.get("n"), f"metrics:/fairness/groups/{_pointer(name)}/n")
        + cell(group.get("accuracy"), f"metrics:/fairness/groups/{_pointer(name)}/accuracy", ".4f")
        + "</tr>"
        for name, group in sorted((fairness.get("groups") or {}).items())
    ]
    per_round = []
    for i, row in enumerate(doc["run"]["rounds"]):
        if not isinstance(row.get("fairness"), dict):
            continue
        cells = cell(row["round"], f"metrics:/rounds/{i}/round") + "".join(
            cell(row["fairness"][key], f"metrics:/rounds/{i}/fairness/{key}", spec)
            if key in row["fairness"]
            else "<td>–</td>"
            for key, _, spec in _FAIRNESS_KEYS[:4]
        )
        per_round.append(f"<tr>{cells}</tr>")
    parts = [
        f'<dl id="fairness">{summary}</dl>',
        _table(["group", "n", "accuracy"], groups, ident="fairness-groups"),
    ]
    if per_round:
        labels = [label for _, label, _ in _FAIRNESS_KEYS[:4]]
        parts.append(_table(["round", *labels], per_round, ident="fairness-rounds"))
    return f"<section><h2>Fairness across groups</h2>{''.join(parts)}</section>"


def _pointer(name: str) -> str:
    """A JSON-pointer token (RFC 6901)."""
    return str(name).replace("~", "~0").replace("/", "~1")


def _carbon(doc: dict[str, Any]) -> str:
    carbon = doc["run"].get("carbon")
    if not isinstance(carbon, dict):
        text = f"Energy and CO₂: {NOT_MEASURED} (metrics.json has no 'carbon' section)."
        return f"<section><h2>Energy and CO₂</h2>{_absent(text, 'carbon')}</section>"
    items = [
        (
            "energy (kWh)",
            cell(carbon.get("energy_kwh"), "metrics:/carbon/energy_kwh", ".6f", tag="span"),
        ),
        ("CO₂ (g)", cell(carbon.get("co2_g"), "metrics:/carbon/co2_g", ".3f", tag="span")),
        ("selection", cell(carbon.get("selection"), "metrics:/carbon/selection", tag="span")),
    ]
    if "trace" in carbon:  # the simulator's estimate; sites measure at their grid's average
        items.append(
            ("intensity trace", cell(carbon.get("trace"), "metrics:/carbon/trace", tag="span"))
        )
    items.append(("measured by", cell(carbon.get("source"), "metrics:/carbon/source", tag="span")))
    if "masked_rounds" in carbon:
        items.append(
            (
                "rounds under secure aggregation (per-site values not known)",
                cell(carbon["masked_rounds"], "metrics:/carbon/masked_rounds", tag="span"),
            )
        )
    summary = "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    tables = [
        _carbon_table(carbon, "per_region", "region", "carbon-regions"),
        _carbon_table(carbon, "per_site", "site", "carbon-sites"),
        _carbon_rounds(carbon),
    ]
    body = "".join(t for t in tables if t)
    return f'<section><h2>Energy and CO₂</h2><dl id="carbon">{summary}</dl>{body}</section>'


def _carbon_table(carbon: dict[str, Any], key: str, label: str, ident: str) -> str:
    """The simulator's ``per_region`` or a deployment's ``per_site`` totals."""
    if key not in carbon:
        return ""
    rows = []
    for name, totals in sorted((carbon.get(key) or {}).items()):
        base = f"metrics:/carbon/{key}/{_pointer(name)}"
        rows.append(
            f"<tr><td>{_esc(name)}</td>"
            + cell(totals.get("client_rounds"), f"{base}/client_rounds")
            + cell(totals.get("energy_kwh"), f"{base}/energy_kwh", ".6f")
            + cell(totals.get("co2_g"), f"{base}/co2_g", ".3f")
            + "</tr>"
        )
    return _table([label, "client-rounds", "energy kWh", "CO₂ g"], rows, ident=ident)


def _carbon_rounds(carbon: dict[str, Any]) -> str:
    """A deployment's rounds: sites that measured, energy and CO₂, and whether the
    per-site split is known (not under secure aggregation)."""
    if not isinstance(carbon.get("per_round"), list):
        return ""
    rows = []
    for i, row in enumerate(carbon["per_round"]):
        base = f"metrics:/carbon/per_round/{i}"
        split = "masked sum" if row.get("per_site") is None else "per site"
        rows.append(
            "<tr>"
            + cell(row.get("round"), f"{base}/round")
            + cell(row.get("sites"), f"{base}/sites")
            + cell(row.get("energy_kwh"), f"{base}/energy_kwh", ".6f")
            + cell(row.get("co2_g"), f"{base}/co2_g", ".3f")
            + f"<td>{split}</td></tr>"
        )
    headers = ["round", "sites measured", "energy kWh", "CO₂ g", "known"]
    return _table(headers, rows, ident="carbon-rounds")


def _lineage(doc: dict[str, Any]) -> str:
    lineage = doc["lineage"]
    if lineage is None:
        text = (
            "No fleet given: lineage (model version, bundles, rollouts, devices) was not "
            "looked up. Pass --fleet-url URL --fleet-run ID with $FEDFLEET_TOKEN set."
        )
        return f"<section><h2>Lineage</h2>{_absent(text, 'lineage')}</section>"
    run = lineage["run"]
    src = run["source"]
    parts = [
        f'<dl id="lineage"><dt>fleet</dt><dd><code>{_esc(lineage["fleet_url"])}</code></dd>'
        f"<dt>fleet run</dt><dd>{cell(run['id'], f'fleet:{src}#/id', tag='span')} "
        f"{cell(run['status'], f'fleet:{src}#/status', tag='span')}</dd>"
        f"<dt>model version</dt><dd>"
        f"{cell(run['final_model_version_id'], f'fleet:{src}#/final_model_version_id', tag='span')}"
        "</dd></dl>"
    ]
    model = lineage["model"]
    if model is None:
        parts.append(_absent("The fleet run has no final model version yet.", "lineage-model"))
        return f"<section><h2>Lineage</h2>{''.join(parts)}</section>"
    msrc = model["source"]
    match = model["checkpoint_matches_run"]
    verdict = {True: "matches", False: "DIFFERS FROM", None: "cannot be compared with"}[match]
    parts.append(
        f"<p id=\"checkpoint-match\" data-value='{json.dumps(match)}'>The registry's checkpoint "
        f'<span class="{"ok" if match else "bad"}">{verdict}</span> this run folder\'s model.pt '
        f"(SHA-256 {cell(doc['run']['model_sha256'], 'run:model_sha256', tag='span')}).</p>"
    )
    artifacts = [_artifact_row(a, msrc) for a in model["artifacts"]]
    parts.append(
        _table(
            ["artifact", "format", "target", "bytes", "sha256", ""], artifacts, ident="artifacts"
        )
    )
    devices = lineage["devices"]
    dsrc = f"fleet:{devices['source']}"
    parts.append(
        f'<p id="devices-running">Devices reporting this model version: '
        f"{cell(devices['count'], f'{dsrc}#count:@/items', tag='span')} "
        f"({cell(devices['names'], f'{dsrc}#field:name@/items', tag='span')}).</p>"
    )
    parts.append(_rollouts(lineage))
    return f"<section><h2>Lineage</h2>{''.join(parts)}</section>"


def _artifact_row(artifact: dict[str, Any], model_src: str) -> str:
    base = f"fleet:{model_src}#/artifacts/{artifact['index']}"
    sha = cell(artifact["sha256"], f"{base}/sha256", tag="span")
    return (
        "<tr>"
        + cell(artifact["id"], f"{base}/id")
        + cell(artifact["format"], f"{base}/format")
        + cell(artifact["target"], f"{base}/target")
        + cell(artifact["size_bytes"], f"{base}/size_bytes")
        + f'<td class="hash">{sha}</td>'
        + f"<td>{'signed' if artifact['signed'] else 'unsigned'}</td></tr>"
    )


def _rollouts(lineage: dict[str, Any]) -> str:
    rows = []
    for r in lineage["rollouts"]:
        src = r["source"]
        names = ", ".join(d["name"] or d["id"] for d in r["devices"] if d["phase"] == "installed")
        rows.append(
            f"<tr>{cell(r['id'], f'fleet:{src}#/id')}{cell(r['group'], f'fleet:{src}#/group')}"
            f"{cell(r['status'], f'fleet:{src}#/status')}"
            f"{cell(len(r['devices']), f'fleet:{src}#count:@/devices')}"
            f"{cell(r['installed'], f'fleet:{src}#count:phase=installed@/devices')}"
            f"<td>{_esc(names) or '–'}</td></tr>"
        )
    if not rows:
        return _absent("No rollout of this model version.", "rollouts")
    headers = ["rollout", "group", "status", "devices", "running it", "devices running it"]
    return _table(headers, rows, ident="rollouts")


def _audit(doc: dict[str, Any]) -> str:
    if not doc["sites"]:
        text = "No site audit log given (--site site.toml): audit logs were not verified."
        return f"<section><h2>Audit-log verification</h2>{_absent(text, 'audit')}</section>"
    rows = []
    for site in doc["sites"]:
        v = site["verdict"]
        base = f"site:{site['site']}/verdict"
        badge = (
            '<span class="ok">verified</span>'
            if v.get("ok")
            else '<span class="bad">TAMPERED</span>'
        )
        rows.append(
            f"<tr><td>{_esc(site['site'])}</td><td>{badge}</td>"
            + cell(v.get("ok"), f"{base}/ok")
            + cell(v.get("entries"), f"{base}/entries")
            + cell(v.get("authenticated"), f"{base}/authenticated")
            + f"<td>{_esc(v.get('problem') or v.get('note') or '')}</td>"
            + f"<td><code>{_esc(v.get('path', ''))}</code></td></tr>"
        )
    headers = ["site", "verdict", "ok", "entries", "head authenticated", "problem / note", "log"]
    return (
        f"<section><h2>Audit-log verification</h2>{_table(headers, rows, ident='audit')}</section>"
    )


def _software(doc: dict[str, Any]) -> str:
    software = doc["software"]
    rows = []
    for name, package in sorted(software["packages"].items()):
        record = cell(package["record_sha256"], f"software:{name}/record_sha256", tag="span")
        rows.append(
            f"<tr><td>{_esc(name)}</td>"
            + cell(package["version"], f"software:{name}/version")
            + f'<td class="hash">{record}</td></tr>'
        )
    run = doc["run"]
    items = [
        (
            "fedfleet source (SHA-256 of its .py files)",
            cell(software["source_sha256"], "software:source_sha256", tag="span"),
        ),
        (
            "the run's app (app/pyproject.toml)",
            cell(run["app_sha256"], "run:app_sha256", tag="span"),
        ),
        ("the run's model (model.pt)", cell(run["model_sha256"], "run:model_sha256", tag="span")),
    ]
    pins = "".join(f'<dt>{_esc(k)}</dt><dd class="hash">{v}</dd>' for k, v in items)
    table = _table(
        ["package", "version", "SHA-256 of its installed RECORD"], rows, ident="software"
    )
    return (
        '<section><h2>Software</h2><p class="meta">What produced this report; a run\'s '
        f'own pins are below.</p>{table}<dl id="pins">{pins}</dl></section>'
    )


def render_html(doc: dict[str, Any]) -> str:
    """The report page for the evidence ``doc`` (see :func:`coordinator.report.build.collect`)."""
    title = f"Compliance report · run {doc['run']['id']}"
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # <, > and & as JSON escapes: no text from a source can end or confuse the script element
    data = (
        json.dumps(doc, sort_keys=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    sections = (
        _summary(doc),
        _rounds(doc),
        _participants(doc),
        _privacy(doc),
        _secagg(doc),
        _lineage(doc),
        _audit(doc),
        _fairness(doc),
        _carbon(doc),
        _software(doc),
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="meta">Generated by <code>fedfleet report</code> at '
        f"<time>{stamp}</time>. Every value below names its source (<code>data-src</code>).</p>"
        + "".join(sections)
        + f'<script type="application/json" id="report-data">{data}</script></body></html>'
    )
