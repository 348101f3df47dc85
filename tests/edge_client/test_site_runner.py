"""What a site runs for a run's FAB (``edge_client.site_runner.decide``).

FABs are built with Flower's own ``flwr build`` code (``build_fab_from_disk``); the
hash the site pins is the SHA-256 of those bytes, as ``flwr build`` names the file.
The real-process path (SuperNode, `site join`, `flwr run`) is tests/e2e/test_site_pinning.py.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from edge_client.site_config import SiteConfig
from edge_client.site_runner import decide, fab_clientapp

sys.path.insert(0, str(Path(__file__).parent))
from site_testkit import make_site

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "{package}.server:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
"""


def _fab(root: Path, *, clientapp: str, package: str = "evil", marker: Path | None = None) -> bytes:
    """A FAB whose ``package`` holds a ClientApp module that writes ``marker`` on import."""
    app = root / "app"
    (app / package).mkdir(parents=True)
    (app / package / "__init__.py").write_text("")
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n" if marker else ""
    (app / package / "app.py").write_text(code + "app = None\n")
    (app / package / "server.py").write_text("app = None\n")
    (app / "pyproject.toml").write_text(
        PYPROJECT.format(name="someapp", package=package, clientapp=clientapp)
    )
    return build_fab_from_disk(app)


@pytest.fixture
def site(tmp_path: Path) -> SiteConfig:
    return SiteConfig.load(make_site(tmp_path / "site", {}))


def test_a_stranger_app_is_refused_naming_site_component_and_hash(
    site: SiteConfig, tmp_path: Path
) -> None:
    content = _fab(tmp_path, clientapp="evil.app:app")
    decision = decide(site, content)
    assert decision.verdict == "refused"
    assert decision.fab_sha256 == hashlib.sha256(content).hexdigest()
    assert "site st-marys runs only code it pinned" in decision.reason
    assert "'evil.app:app'" in decision.reason and decision.fab_sha256 in decision.reason


def test_a_fab_naming_fedfleets_component_gets_the_installed_app_not_its_copy(
    site: SiteConfig, tmp_path: Path
) -> None:
    """The FAB ships its own edge_client/app.py; the site runs fedfleet's installed one:
    deciding reads only the FAB's pyproject.toml, and nothing of it is imported."""
    marker = tmp_path / "marker"
    content = _fab(tmp_path, clientapp="edge_client.app:app", package="edge_client", marker=marker)
    decision = decide(site, content)
    import edge_client.app

    assert decision.verdict == "fedfleet-app"
    assert Path(edge_client.app.__file__).resolve().is_relative_to(Path.cwd().resolve())
    assert not marker.exists()


def test_fedfleet_app_off_refuses_even_fedfleets_component(tmp_path: Path) -> None:
    site = SiteConfig.load(
        make_site(tmp_path / "site", {"fedfleet-app = true": "fedfleet-app = false"})
    )
    decision = decide(site, _fab(tmp_path, clientapp="edge_client.app:app", package="edge_client"))
    assert decision.verdict == "refused"
    assert "is not a FAB pinned in site.toml [code] fab-sha256" in decision.reason


def test_a_fab_pinned_by_its_sha256_is_run(tmp_path: Path) -> None:
    content = _fab(tmp_path, clientapp="evil.app:app")
    pin = hashlib.sha256(content).hexdigest()
    site = SiteConfig.load(
        make_site(tmp_path / "site", {"fab-sha256 = []": f'fab-sha256 = ["{pin}"]'})
    )
    assert decide(site, content).verdict == "pinned-fab"
    # one byte more is another app
    assert decide(site, content + b"\0").verdict == "refused"


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_bytes_that_are_no_fab_are_refused(site: SiteConfig, content: bytes) -> None:
    assert fab_clientapp(content) == ""
    decision = decide(site, content)
    assert decision.verdict == "refused" and "'(none declared)'" in decision.reason
