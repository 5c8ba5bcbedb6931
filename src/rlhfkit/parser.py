"""The command lines: a stage's ``rlhfkit STAGE --config FILE.yaml --field value``, and ``rlhfkit pipeline``.

The YAML file sets the defaults, then `transformers`' ``HfArgumentParser`` parses the command line
over them, so ``--help`` lists every field with its default and help text.
"""

from __future__ import annotations

import argparse

import yaml

from .config import ConfigError, validate
from .config_yaml import check_mapping, field_names, load_yaml_file, stage_of, unknown_key_message
from .trl_names import is_trl_option, names_for


def parse_config(cls: type, argv: list[str] | None = None, prog: str | None = None):
    """YAML defaults from ``--config``, then command-line overrides; validated."""
    from transformers import HfArgumentParser

    # allow_abbrev=False: a misspelt prefix (--learning_rat) must not silently set a field.
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(cls, prog=prog, description=(cls.__doc__ or "").strip(), allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file of field: value (command-line flags override it).")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback on errors.")
    rest, trl_flags = split_trl_flags(rest, cls)
    raw = (load_yaml_file(known.config) or {}) if known.config else {}
    if trl_flags:  # TRL names on the command line override the file's, then translate together
        raw = {**raw, **trl_flags} if isinstance(raw, dict) else raw
    if raw or known.config:
        parser.set_defaults(**check_mapping(raw, cls, str(known.config or "command line")))
    # returns (config, namespace of --config/--debug, leftover strings)
    # look_for_args_file=False: otherwise a '<argv[0]>.args' file beside the program silently adds flags.
    parsed = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True,
                                                look_for_args_file=False)
    cfg, extra = parsed[0], parsed[-1]
    if extra:
        trl = [a[2:].split("=")[0] for a in extra if a.startswith("--") and is_trl_option(a[2:].split("=")[0])]
        if trl:
            raise ConfigError(f"command line: {unknown_key_message(trl[0], stage_of(cls), field_names(cls))}")
        raise ConfigError(f"unknown command-line arguments: {' '.join(extra)} (see --help)")
    validate(cfg)
    return cfg


def split_trl_flags(argv: list[str], cls: type) -> tuple[list[str], dict]:
    """(argv without TRL-named flags, {TRL name: YAML-typed value}) for the names ``cls``'s stage maps
    that are not rlhfkit fields (``--per_device_train_batch_size 4``; a bare ``--bf16`` is true)."""
    names = set(names_for(stage_of(cls))) - set(field_names(cls))
    rest, found, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in names:
            rest.append(arg)
            i += 1
            continue
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value, i = (argv[i + 1], i + 2) if has_value else ("true", i + 1)
        else:
            i += 1
        found[name] = yaml.safe_load(value) if value.strip() else value
    return rest, found


def parse_pipeline_args(argv: list[str]) -> argparse.Namespace:
    """``rlhfkit pipeline --config FILE [--output_dir DIR] [--force NAME ...]``."""
    from . import pipeline

    parser = argparse.ArgumentParser(prog="rlhfkit pipeline", description=pipeline.__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, help="Pipeline YAML file.")
    parser.add_argument("--output_dir", default=None, help="Overrides the file's output_dir.")
    parser.add_argument("--force", nargs="*", default=[], help="Stage names to rerun even if unchanged.")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback on errors.")
    return parser.parse_args(argv)
