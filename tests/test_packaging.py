"""The wheel: every package of etl, and the migrations, are in it (pyproject lists them by hand)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from etl.store import migrate

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_maps_the_migrations_into_etl():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "etl").rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())
    } | {"etl"}
    assert set(tool["packages"]) == on_disk | {"etl.migrations", "etl.migrations.versions"}
    assert tool["package-dir"] == {"etl.migrations": "migrations"}
    assert migrate.script_location() == ROOT / "migrations"  # from a checkout: the top-level folder
