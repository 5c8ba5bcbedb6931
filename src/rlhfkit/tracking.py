"""Metric sinks. ``metrics.jsonl`` is always written; tensorboard, wandb and mlflow on request."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value):
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """One JSON object a line: ``{"step": N, "name": value, ...}``, flushed on every write."""

    def __init__(self, output_dir: str | Path, report_to: list[str] = (), enabled: bool = True,
                 resume_step: int | None = None, run_name: str = "rlhfkit"):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._sinks = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        for name in report_to:
            self._sinks.append(_open_sink(name, Path(output_dir), run_name))

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint: they will be logged again."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for sink in self._sinks:
            sink(step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


class _TensorBoard:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def __call__(self, step, metrics):
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


def _open_sink(name: str, output_dir: Path, run_name: str):
    try:
        if name == "tensorboard":
            return _TensorBoard(output_dir / "tensorboard")
        if name == "wandb":
            import wandb

            run = wandb.init(project=run_name, dir=str(output_dir))
            return lambda step, m: run.log(m, step=step)
        if name == "mlflow":
            import mlflow

            mlflow.start_run(run_name=run_name)
            return lambda step, m: mlflow.log_metrics(m, step=step)
    except ImportError as e:
        raise RuntimeError(f"report_to: {name!r} needs the {e.name!r} package (pip install {e.name})") from None
    raise ValueError(f"report_to: unknown sink {name!r}")
