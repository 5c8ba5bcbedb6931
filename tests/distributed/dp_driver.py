"""Run several rlhfkit stages in one ``torchrun`` launch: ``dp_driver.py RESULTS_DIR STAGE=CONFIG[=KILL_AT] ...``.

Each process starts its interpreter, torch and transformers once for all the stages (about ten
seconds a launch on two cores), instead of once per stage. Each stage runs as
``rlhfkit STAGE --config CONFIG`` does (``rlhfkit.cli.main``); its exit code is written to
RESULTS_DIR/NAME.rank-R.rc, and the next stage runs whatever it returned, so a stage expected to
fail can come before others. ``=KILL_AT`` kills that stage at the start of 0-based step KILL_AT
(``tests/kill_support.py``), ``=ckpt:N`` midway through writing the checkpoint of step N; either
must come last: the kill ends the launch.
"""

import os
import sys
from pathlib import Path

from rlhfkit.cli import _end_distributed, main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for kill_support
from kill_support import install  # noqa: E402

results, rank = Path(sys.argv[1]), os.environ.get("RANK", "0")
for spec in sys.argv[2:]:
    stage, config, *kill = spec.split("=")
    if kill:
        where, n = ("checkpoint", kill[0][5:]) if kill[0].startswith("ckpt:") else ("step", kill[0])
        install(where, int(n))
    rc = main([stage, "--config", config])
    (results / f"{Path(config).stem}.rank-{rank}.rc").write_text(str(rc))
_end_distributed()  # as `rlhfkit` does at exit: gloo's threads may abort an undismantled group
