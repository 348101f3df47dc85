"""The ``site.toml`` that ``fedfleet site init`` writes names the site's real files."""

from __future__ import annotations

from pathlib import Path

from edge_client.site import init_site


def test_template_says_to_send_the_public_key_file_that_init_wrote(tmp_path: Path) -> None:
    files = init_site(name="st-marys", out_dir=tmp_path)
    text = files.config.read_text()
    assert files.public_key.name == "st-marys.pub" and files.public_key.is_file()
    assert "send st-marys.pub to the operator" in text
    assert "site.pub" not in text
