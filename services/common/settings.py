"""The machinery of the settings object (services/common/config.py holds the declarations).

A `Var` is a descriptor: reading `settings.NAME` parses `$NAME` at that moment (so a
change of os.environ by a test or a tool is seen), falls back to the declared default,
and fails loudly, naming the variable, on a value of the wrong type.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

# The checkout (or /app in the images): the one definition, re-exported by config.py.
REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean (1/0, true/false)"}


@dataclass(frozen=True)
class Var(Generic[T]):
    """One environment variable: its default, meaning and section of docs/configuration.md.

    read_by: who reads it ("services": the Python code; "compose": only the deployment
    files, e.g. the database's own password). kind: "int", "float", "bool", "str",
    "secret"; by default the default's type. A str default may name other settings in
    braces ("http://127.0.0.1:{FEATURE_PORT}"), and {REPO_ROOT}."""

    default: T
    meaning: str
    group: str
    read_by: str = "services"
    kind: str = ""
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)
        if not self.kind:
            kinds = {bool: "bool", int: "int", float: "float"}
            object.__setattr__(self, "kind", kinds.get(type(self.default), "str"))

    @overload
    def __get__(self, obj: None, owner: type) -> Var[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Var[T] | T:
        if obj is None:
            return self
        return self.read(obj)

    def resolved_default(self, settings: object) -> T:
        if isinstance(self.default, str) and "{" in self.default:
            return self.default.format_map(_Lookup(settings))  # type: ignore[return-value]
        return self.default

    def read(self, settings: object) -> T:
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.resolved_default(settings)
        try:
            if self.kind == "int":
                return int(raw)  # type: ignore[return-value]
            if self.kind == "float":
                return float(raw)  # type: ignore[return-value]
            if self.kind == "bool":
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError(raw)
                return (raw.lower() in _TRUE)  # type: ignore[return-value]
        except ValueError:
            raise SystemExit(f"configuration error: {self.name}={raw!r} is not {_KIND_WORDS[self.kind]}") from None
        return raw  # type: ignore[return-value]


class _Lookup(dict):
    def __init__(self, settings: object) -> None:
        super().__init__()
        self.settings = settings

    def __missing__(self, key: str) -> str:
        return str(REPO_ROOT) if key == "REPO_ROOT" else str(getattr(self.settings, key))


class SettingsBase:
    @classmethod
    def variables(cls) -> dict[str, Var[Any]]:
        """Every declared variable, in declaration order."""
        found: dict[str, Var[Any]] = {}
        for klass in reversed(cls.__mro__):
            found.update({name: value for name, value in vars(klass).items() if isinstance(value, Var)})
        return found

    @classmethod
    def declared(cls, name: str) -> bool:
        return isinstance(getattr(cls, name, None), Var)
