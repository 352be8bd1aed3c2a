"""The one YAML reader: `load_yaml(path)` for run configs, presets, sweep configs, quickstart
profiles and the files `lmscale count` reads (JSON is YAML too).

It uses the safe loader (plain data, never Python objects) and turns every way a file can fail
to be a config (missing, a directory, unreadable, not UTF-8, not YAML, not a mapping) into a
one-line `ConfigError` that names the file. `parse_yaml_value` reads one command-line value
(`--train.lr 3e-4`) the same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lmscale.errors import ConfigError, one_line

__all__ = ["load_yaml", "parse_yaml_value"]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A parser error on one line: where, then what (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        context = getattr(exc, "context", None)
        what = f"{context}, {problem}" if context else problem
        return f"line {mark.line + 1}, column {mark.column + 1}: {' '.join(str(what).split())}"
    return " ".join(str(exc).split())


MAX_DEPTH = 64  # configs nest a few levels; a deeper document is an attack on the parser's stack


class _Refused(Exception):
    """Why a YAML document is not read: it holds an alias, or nests too deeply."""


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader without aliases (a few hundred bytes of `&a [*b, *b, ...]` expand to
    gigabytes once walked) and with a nesting cap (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(f"line {mark.line + 1}: an alias (*name); aliases are not read in configs, "
                           "write the value out")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        """PyYAML's constructors raise plain Python errors for values their tag cannot hold
        (`2001-13-45`, `!!int abc`, an integer of 5,000 digits): those are YAML errors at the node."""
        try:
            return super().construct_object(node, deep)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            what = node.tag.rpartition(":")[2]
            raise yaml.constructor.ConstructorError(None, None, f"not a valid {what} ({one_line(exc)})",
                                                    node.start_mark) from None


class _ValueLoader(_ConfigLoader):
    """One command-line value: also reads `1e-05` and `3e-4` as floats, as Python writes and
    users type them (YAML 1.1 wants a dot in the mantissa and would keep them as text)."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _safe_load(text: str, loader_class: type = _ConfigLoader) -> Any:
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml_value(text: str, what: str) -> Any:
    """One value written in YAML (a command-line `--section.key VALUE`): `3e-4`, `true`, `null`,
    `[a, b]`, or plain text; `what` names it in the one-line `ConfigError` for invalid YAML."""
    try:
        return _safe_load(text, _ValueLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {text!r} is not a valid YAML value ({_yaml_problem(exc)})") from None
    except _Refused as exc:
        raise ConfigError(f"{what}: its value is not read ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{what}: its value is nested too deeply") from None


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping in YAML file `path` (an empty file is `{}`).

    `what` names the kind of file in error messages ("config file", "sweep config", ...); every
    error is a one-line `ConfigError` of the form "<what> <path> ...".
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is a directory, not a YAML file" if path.is_dir()
                          else f"{what} {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte offset {exc.start}); is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = _safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML ({_yaml_problem(exc)})") from None
    except _Refused as exc:
        raise ConfigError(f"{what} {path} is not read: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is not a config: its YAML is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping (key: value lines) at the top level, "
                          f"not a {type(data).__name__}")
    return data
