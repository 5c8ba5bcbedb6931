"""Kill a training run at a chosen point, for the kill-and-resume tests, through the step
driver's public callbacks (``rlhfkit.train.step.callbacks``); nothing in rlhfkit reads an
environment variable for it.

As a program: ``python tests/kill_support.py {--kill-at-step|--kill-in-checkpoint} N STAGE ARGS...``
installs :class:`KillAt` and runs ``rlhfkit STAGE ARGS...`` (``rlhfkit.cli.main``).
"""

import os
import signal
import sys

from rlhfkit.train import step as step_driver


class KillAt(step_driver.StepCallback):
    """SIGKILL this process at the start of 0-based step ``step``, or halfway through writing the
    checkpoint of step ``checkpoint`` (its weights and optimiser written, its trainer state not)."""

    def __init__(self, step: int | None = None, checkpoint: int | None = None):
        self.step, self.checkpoint = step, checkpoint

    def on_step_begin(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save_partial(self, step: int) -> None:
        if step == self.checkpoint:
            os.kill(os.getpid(), signal.SIGKILL)


def install(where: str, n: int) -> None:
    """``where`` is "step" or "checkpoint"."""
    step_driver.callbacks.append(KillAt(**{where: n}))


if __name__ == "__main__":
    from rlhfkit.cli import entry

    flag, n, *rest = sys.argv[1:]
    install({"--kill-at-step": "step", "--kill-in-checkpoint": "checkpoint"}[flag], int(n))
    sys.argv = [sys.argv[0], *rest]
    entry()
