"""Reading configs from YAML: typed, checked values with errors that name the file and the field.

TRL / transformers ``TrainingArguments`` names are translated to rlhfkit fields here
(``trl_names``), using the stage name a stage config carries as its ``stage`` class variable.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from .config import MAPPING_FIELDS, ConfigError, validate
from .trl_names import TrlNameError, is_trl_option
from .trl_names import suggestions as trl_suggestions
from .trl_names import translate as translate_trl


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def load_yaml_file(path: str | Path, what: str = "config file"):
    """``yaml.safe_load`` of a file, with errors that name it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file; unknown fields are errors that name the file and suggest a spelling."""
    return check_mapping(load_yaml_file(path) or {}, cls, str(path))


def check_mapping(raw, cls: type, where: str) -> dict[str, Any]:
    """Field values for ``cls`` from a mapping, typed and checked; errors name ``where`` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of field: value, got {type(raw).__name__}")
    known = field_names(cls)
    stage = stage_of(cls)
    try:  # TRL / transformers TrainingArguments names -> rlhfkit fields (trl_names.TABLE)
        raw = translate_trl(raw, stage, set(known))
    except TrlNameError as e:
        raise ConfigError(f"{where}: {e} (see docs/trl.md)") from None
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: {unknown_key_message(str(key), stage, known)}")
    # argparse neither converts nor checks non-string defaults (nor checks `choices` on any
    # default), so YAML values are typed and checked here, where the file can be named.
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {key: _yaml_value(where, fields[key], hints.get(key), value) for key, value in raw.items()}



def stage_of(cls: type) -> str:
    """The stage name a config class carries (its ``stage`` class variable; "" when none)."""
    return getattr(cls, "stage", "")


def unknown_key_message(key: str, stage: str, known: list[str]) -> str:
    """An unknown field: a TRL option rlhfkit lacks is named as one; else the closest spelling,
    TRL names this stage maps first (``per_device_train_batch_sz`` -> per_device_train_batch_size)."""
    if is_trl_option(key):
        return (f"unsupported TRL option {key!r}: rlhfkit {stage or 'this stage'} has no equivalent; remove it "
                "(docs/trl.md lists every TRL name rlhfkit maps)")
    hint = trl_suggestions(key, stage, known)
    return f"unknown field {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def from_mapping(cls: type, raw: dict, where: str):
    """A validated config of ``cls`` from a mapping (a pipeline stage's fields, say)."""
    cfg = cls(**check_mapping(raw, cls, where))
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config:", f"{where}:", 1)) from None
    return cfg


def _yaml_value(path, f: dataclasses.Field, hint, value):
    """`value` as the field's type (int, float, str, bool, list[str]), or a ConfigError."""
    given = value

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{path}: field {f.name!r}: expected {expected}, got {given!r}")

    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and not isinstance(value, bool):
        raise bad("true or false")
    if hint is int:
        if not (is_number and (isinstance(value, int) or value.is_integer())):
            raise bad("an integer")
        value = int(value)
    if hint is float:
        if not (is_number or isinstance(value, str)):
            raise bad("a number")
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            value = float(value)
        except (ValueError, OverflowError):
            raise bad("a number") from None
    if hint is str and not isinstance(value, str):
        raise bad("a string")
    if hint == list[float]:
        value = [value] if isinstance(value, (int, float)) else value
        if not (isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad("a list of numbers")
        value = [float(v) for v in value]
    if hint == list[str]:
        if f.name in MAPPING_FIELDS and isinstance(value, dict):  # {source: weight} -> ["source=weight"]
            value = [f"{k}={v}" for k, v in value.items()]
        value = [value] if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad("a list of strings")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{path}: field {f.name!r}: {value!r} is not one of {', '.join(choices)}")
    return value

