"""JSON files: read with one-line errors naming the file, write atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biplanar.errors import InputError
from biplanar.io.atomic import atomic_write_text


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; ``InputError`` naming it if missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def write_json(path: str | Path, document: Any) -> None:
    """Write ``document`` as indented JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(document, indent=2) + "\n")
