"""``fedfleet report RUN``: one self-contained compliance report of a finished run.

What a compliance office asks of a run, each from its own source:

- :mod:`~coordinator.report.evidence` reads the run folder (``metrics.json``, ``run.json``,
  the simulation's privacy ledger) and the software that runs the report;
- :mod:`~coordinator.report.sites` asks each site's own tools (``fedfleet site audit
  --verify --json``, ``fedfleet site budget --json``) for its audit-log verdict and its
  ledger: verifying a log needs the site's audit key, and the coordinator never imports
  the site runtime (tests/test_layers.py), so the site's command does it;
- :mod:`~coordinator.report.lineage` follows run → model version → bundles → rollouts →
  devices through the fleet API (:mod:`fleet.client`), never the fleet's database;
- :mod:`~coordinator.report.render` writes one HTML file (inline CSS and SVG, no external
  asset) in which every number carries ``data-src`` (where it comes from) and
  ``data-value`` (its exact value), and the whole evidence is embedded as JSON
  (``<script id="report-data">``), so tests cross-check each number against its source;
- :mod:`~coordinator.report.pdf` prints that HTML to PDF with headless Chromium.
"""
