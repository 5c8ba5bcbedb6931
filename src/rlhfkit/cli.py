"""``rlhfkit STAGE --config FILE.yaml [--field value ...]``: one subcommand per stage.

Errors a user can fix (bad data, bad config, a run that must stop) print one line and exit
non-zero; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from .stages import find, usage

USAGE = usage()

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="[rlhfkit] %(message)s")
    for name in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        # Asked for: stdout, exit 0. Missing stage: an error, so stderr (as argparse does), exit 2.
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USER_ERROR
    stage, rest = argv[0], argv[1:]
    if stage == "lab" and rest and not rest[0].startswith("-"):  # `rlhfkit lab noise ...`
        rest = ["--lever", rest[0], *rest[1:]]
    if stage == "annotate":  # a web app with subcommands of its own; needs neither torch nor transformers
        from .annotate.cli import main as annotate_main

        return annotate_main(rest)
    debug = "--debug" in rest
    _quiet_libraries()
    if find(stage) is None:
        print(f"rlhfkit: error: unknown stage {stage!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USER_ERROR
    return _run_stage(stage, rest, debug)


def _end_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to shutdown, gloo's threads
    can abort a run that succeeded ("terminate called without an active exception", exit -6)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run_stage(stage: str, rest: list[str], debug: bool) -> int:
    from .config import ConfigError
    from .data import DataError
    from .judge import JudgeError
    from .train.distributed import TrainingError

    try:
        if stage == "pipeline":  # its file lists stages, so it has no config dataclass of its own
            from .parser import parse_pipeline_args
            from .pipeline import run_pipeline

            args = parse_pipeline_args([a for a in rest if a != "--debug"])
            summary = run_pipeline(args.config, args.output_dir, tuple(args.force))
        else:
            from .parser import parse_config

            cls, fn = find(stage).load()
            cfg = parse_config(cls, rest, prog=f"rlhfkit {stage}")
            if "torch" in sys.modules:  # a stage that computes: threads from the cores free now
                from .resources import set_cpu_threads

                set_cpu_threads(lambda m: print(f"[rlhfkit] {m}", flush=True))  # stdout: stderr is for errors
            summary = fn(cfg)
    except (DataError, ConfigError, TrainingError, JudgeError, ValueError, OSError) as e:
        if debug:
            traceback.print_exc()
        # subclasses too (extras.MissingExtra is a ConfigError): one line without the class name
        print(f"rlhfkit {stage}: error: {e}" if isinstance(e, (DataError, ConfigError, TrainingError, JudgeError))
              else f"rlhfkit {stage}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"rlhfkit {stage}: interrupted", file=sys.stderr)
        return 130
    # under torchrun / accelerate launch every process returns here: one line from the main one
    if (isinstance(summary, dict) and "train_seconds" in summary and stage not in ("demo", "lab")
            and os.environ.get("RANK", "0") == "0"):
        print(f"rlhfkit {stage}: done -> {cfg.output_dir} ({summary.get('steps')} steps, "
              f"{summary.get('train_seconds')} s)")
    return 0


def entry() -> None:
    try:
        code = main()
    finally:
        _end_distributed()
    sys.exit(code)


if __name__ == "__main__":
    entry()
