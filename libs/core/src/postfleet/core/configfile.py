"""The postfleet configuration file: one YAML mapping of Postfix parameters
(like main.cf), with role sections (like master.cf's -o) and a ``routing:``
block. Read here with PyYAML only, so the launcher can read it without
loading the settings machinery (pydantic) it never uses.

Postfix parameters: none of its own (the file holds them all).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

CONFIG_ENV = "POSTFLEET_CONFIG"


def load_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a postfleet YAML file; an empty or missing path gives no values."""
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of parameters")
    return data
