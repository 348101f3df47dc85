"""A valid site folder for the site tests (`init_site` plus a filled-in schema)."""

from __future__ import annotations

from pathlib import Path

from edge_client.site import init_site


def make_site(tmp_path: Path, replace: dict[str, str]) -> Path:
    """`init_site` output with a two-column schema and text replacements in site.toml."""
    files = init_site(name="st-marys", out_dir=tmp_path)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    text = files.config.read_text().replace(
        '# age = "int"\n# mean-radius = "float"\n', 'age = "int"\nradius = "float"\n'
    )
    for old, new in replace.items():
        if old not in text:
            raise KeyError(old)
        text = text.replace(old, new)
    files.config.write_text(text)
    return files.config
