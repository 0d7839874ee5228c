"""Reading a recipe's keys with their types checked: a wrong type is a RecipeError naming
the key; every key read is remembered, so that the rest can be named as ignored."""
from __future__ import annotations

import json
from pathlib import Path


class RecipeError(ValueError):
    """A recipe that cannot be read: one line naming the file and, where it is one, the key."""


def read_json_object(path: Path, label: str) -> dict:
    """A JSON file that holds an object (a DeepSpeed config, peft's adapter_config.json), or a
    RecipeError that names it by ``label``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{label}: not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{label}: must hold a JSON object")
    return data


KINDS = {
    int: "an integer", float: "a number", bool: "true or false", str: "a string",
    list: "a list of strings", dict: "a mapping",
}


class Keys:
    """The top-level keys of one recipe file (a dict), read with their types checked."""

    def __init__(self, data: dict, source: str):
        self.data, self.source, self.used = data, source, set()

    def given(self, key: str) -> bool:
        """The file sets ``key`` (to something other than null)."""
        return self.data.get(key) is not None

    def get(self, key: str, kind, default=None):
        """``key``'s value, ``default`` when absent or null; RecipeError when not ``kind``
        (a tuple of kinds accepts any; int accepts no bool; float accepts an int)."""
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for k in kinds:
            if k is bool and isinstance(value, bool):
                return value
            if k is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if k is str and isinstance(value, str):
                return value
            if k is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            if k is dict and isinstance(value, dict):
                return value
        raise RecipeError(f"{self.source}: {key} must be {' or '.join(KINDS[k] for k in kinds)}, got {value!r}")

    def choice(self, key: str, choices, default=None):
        """A string key with a fixed set of values (case-insensitive)."""
        value = self.get(key, str, default)
        if value is not None and str(value).lower() not in choices:
            raise RecipeError(f"{self.source}: {key} must be one of {', '.join(choices)}, got {value!r}")
        return None if value is None else str(value).lower()

    def present(self, names) -> list[str]:
        """Those of ``names`` the file sets (non-null, not false), in file order."""
        return [k for k in self.data if k in names and self.data[k] not in (None, False)]

    def unread(self) -> list[str]:
        return [k for k in self.data if k not in self.used]
