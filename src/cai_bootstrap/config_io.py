"""Reading run files: one YAML reader and one error format for every typed config.

A user who mistypes a field should get the same kind of message from every phase:
the file, the dotted field name, what is wrong and the value given.
"""

from __future__ import annotations

import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Mapping

import yaml
from pydantic import AfterValidator, Field, StrictInt, ValidationError


def absolute_path(path: str | os.PathLike) -> Path:
    """A path as the user typed it (relative to the directory the command runs in), made absolute.

    Paths become absolute where they enter (config fields, command-line options), so no later
    join can apply a relative prefix twice, and a phase started from another directory, or a
    subprocess, still finds them. Symbolic links are resolved, so ``link/..`` means what the
    operating system means by it.
    """
    return Path(os.path.expanduser(os.fspath(path))).resolve()


# A seed: a whole number >= 0, never a bool (YAML's `true` would otherwise pass as seed 1).
Seed = Annotated[StrictInt, Field(ge=0)]

# A config field naming a file or folder: absolute once validated.
UserPath = Annotated[Path, AfterValidator(absolute_path)]


DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def device_arg(text: str) -> str:
    """argparse ``type`` of a ``--device``: cpu, cuda, cuda:N or mps."""
    if not DEVICE_RE.match(text):
        raise ValueError("not a device")
    return text


def path_arg(text: str) -> str:
    """argparse ``type`` of an option naming a file or folder: absolute from the moment it is parsed."""
    if not text.strip():
        raise ValueError("empty path")
    return str(absolute_path(text))


def read_yaml_section(path: str | Path, section: str, error: type[Exception]) -> dict:
    """The mapping under ``section`` of a YAML file (or the whole file if it has no such key)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"config file {p} is a directory; give the YAML file itself")
    if not p.is_file():
        raise error(f"config file {p} does not exist")
    try:
        text = p.read_bytes().decode("utf-8")
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text))
        if aliases > MAX_YAML_ALIASES:
            # Each alias can repeat a whole subtree: a few lines can stand for gigabytes (a "billion laughs").
            raise error(f"{p}: {aliases} YAML aliases (*name); a run file may use at most {MAX_YAML_ALIASES}")
        loaded = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {shorten(str(e))}") from None
    if loaded is None:
        raise error(f"config file {p} is empty (or only comments): it would run every default setting; "
                    "give the settings you mean, or leave out --config")
    if not isinstance(loaded, dict):
        raise error(f"{p}: top level must be a mapping of settings")
    data = loaded.get(section, loaded)
    if not isinstance(data, dict):
        raise error(f"{p}: '{section}' must be a mapping of settings, got {type(data).__name__}")
    return dict(data)


# Aliases a run file may use; shipped configs use none.
MAX_YAML_ALIASES = 64
# The longest echo of a user's value in an error message: enough to recognise it, never a flood.
MAX_ECHO_CHARS = 200


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def format_validation_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:20]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']} (got {_echo(err.get('input'))})")
    return "; ".join(parts) + (f"; ... {len(e.errors()) - 20} more" if len(e.errors()) > 20 else "")


def _echo(value: Any) -> str:
    """repr of a user's value, cut short without building the whole of a huge one."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 20:
        return f"a {type(value).__name__} of {len(value)} entries"
    try:
        return shorten(reprlib.repr(value) if isinstance(value, (dict, list, tuple)) else repr(value))
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def apply_overrides(data: dict, overrides: Mapping[str, Any] | None, error: type[Exception], what: str) -> dict:
    """Set each non-None override (dotted keys reach into nested sections) on ``data``, in place."""
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value, error, what)
    return data


def set_dotted(data: dict, key: str, value: Any, error: type[Exception], what: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise error(f"invalid {what}: {'.'.join(parts[: i + 1])}: must be a mapping of settings")
    node[parts[-1]] = value
