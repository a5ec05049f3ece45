"""TOML job files: the ``[score]`` table, its ``${name}`` placeholders filled from ``--var`` and then
the environment, and typos named with the closest valid name. A nightly job is a file plus one
``--var ds=...``; what could go wrong in it is said in one line before anything is read.

    >>> substitute("in/date=${ds}/", {"ds": "2026-11-05"}, {}, "input")
    'in/date=2026-11-05/'
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from batchserve.errors import ConfigError, closest

__all__ = ["parse_vars", "substitute", "load_job_file"]


_PLACEHOLDER_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_vars(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``--var name=value`` flags (repeatable) as a mapping; a bad one is a one-line error."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ConfigError(f"--var takes name=value, got {item!r}")
            pairs.append((key.strip(), value))
    out: dict[str, str] = {}
    for key, value in pairs:
        if not _VAR_NAME_RE.match(key):
            raise ConfigError(f"--var name {key!r} must be letters, digits and _ (not starting with a digit)")
        if not isinstance(value, str):
            raise ConfigError(f"--var {key} must be text, got {value!r}")
        out[key] = value
    return out


def substitute(value: Any, variables: Mapping[str, str], env: Mapping[str, str], where: str,
               used: set[str] | None = None) -> Any:
    """Fill ``${name}`` placeholders in every string of a job file value: ``--var`` first, then the
    environment; ``$$`` is a literal ``$``. A missing variable names itself and the closest given one."""
    if isinstance(value, str):
        def fill(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if not _VAR_NAME_RE.match(name):
                raise ConfigError(f"{where}: ${{{name}}} is not a variable name (letters, digits and _)")
            if used is not None:
                used.add(name)
            if name in variables:
                return variables[name]
            if name in env:
                return env[name]
            raise ConfigError(
                f"{where} uses ${{{name}}} but no --var {name}=... was given and the environment has no {name}"
                + closest(name, sorted(variables)).replace("did you mean ", "did you mean --var ")
            )
        return _PLACEHOLDER_RE.sub(fill, value)
    if isinstance(value, list):
        return [substitute(v, variables, env, where, used) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables, env, where, used) for k, v in value.items()}
    return value


def load_job_file(path: str, known: Collection[str], command: str = "score") -> dict[str, Any]:
    """Read the ``[score]`` (or ``[serve]``) table of a TOML job file, placeholders unfilled; ``score``
    also accepts top-level keys (the older form). One file may hold both tables: the nightly job and
    the server that answers with the same model."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("job file not found", path=path) from None
    except IsADirectoryError:
        raise ConfigError("job file is a folder; pass the .toml file itself", path=path) from None
    except UnicodeDecodeError:
        raise ConfigError("job file is not UTF-8 text (is it a TOML file?)", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file is not valid TOML: {exc}", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the job file: {exc.strerror or exc}", path=path) from None
    tables = ("score", "serve")
    if any(t in data for t in tables):  # then everything belongs in them: a stray [scoring] is a mistake
        for key, value in data.items():
            if key in tables:
                continue
            if isinstance(value, dict):
                hint = next((f" (did you mean [{t}]?)" for t in tables if closest(key, [t])), "")
                raise ConfigError(f"job file has an unknown table [{key}]{hint}; settings go in the [{command}] table",
                                  path=path)
            raise ConfigError(f"job file key {key!r} is outside the [{command}] table; put it under [{command}]",
                              path=path)
    if command == "serve":  # top-level keys are score's (the older form); serving settings need their table
        if "serve" not in data:
            raise ConfigError("job file has no [serve] table; serving settings go in a [serve] table", path=path)
        table = data["serve"]
    else:
        table = data.get("score", {} if "serve" in data else data)
    if not isinstance(table, dict):
        raise ConfigError(f"job file [{command}] must be a table", path=path)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"job file has an unknown key {unknown[0]!r}{closest(unknown[0], sorted(known))}"
                          + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""), path=path)
    return table
