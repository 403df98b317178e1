"""`python -m workers.distill run job.json`: train, evaluate and export locally.

job.json (paths relative to the file's folder):
    {"teacher": "path/or/hub-id", "train": "train.jsonl", "validation": "dev.jsonl",
     "workdir": "run", "config": {...DistillConfig...}}
Only "teacher" and "train" are required. Rerunning the same job resumes from its checkpoint;
Ctrl-C stops within about a second (the engine asks at most once a second), with a checkpoint
written.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from contract.config import DistillConfig
from contract.records import Example, RecordError, parse_dataset

from .errors import DistillError, Stopped

if TYPE_CHECKING:  # the real import waits until the job is sound (it loads torch)
    from .callbacks import Event, Progress


class ConsoleCallbacks:
    """Progress on stderr; SIGINT asks the run to stop within about a second."""

    def __init__(self, *, every: int) -> None:
        self.every = every
        self.stop_requested = False

    def on_config(self, config: DistillConfig) -> None:
        pass

    def on_progress(self, p: Progress) -> None:
        if p.losses and (p.step % self.every == 0 or p.step == p.total_steps):
            parts = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
            print(
                f"[{p.stage}] {p.step}/{p.total_steps} lr={p.learning_rate:.2e} {parts}",
                file=sys.stderr,
            )

    def on_event(self, e: Event) -> None:
        if e.type != "loss":
            print(f"{e.level}: {e.message}", file=sys.stderr)

    def should_stop(self) -> bool:
        return self.stop_requested

    def request_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True


def read_examples(path: Path) -> list[Example]:
    with open(path, "rb") as f:
        return parse_dataset(f, filename=path.name).examples


def _beside(base: Path, ref: str) -> str:
    """A path relative to job.json's folder when one exists there; else as given (a hub id)."""
    return str(base / ref) if (base / ref).exists() else ref


def run_job(job_path: Path) -> int:
    job = json.loads(job_path.read_text(encoding="utf-8"))
    base = job_path.parent
    unknown = set(job) - {"teacher", "train", "validation", "workdir", "config"}
    if unknown or "teacher" not in job or "train" not in job:
        raise DistillError(
            "job_invalid",
            "job.json needs 'teacher' and 'train' and may have 'validation', 'workdir', "
            f"'config' (unknown: {sorted(unknown)})",
        )
    config = DistillConfig.model_validate(job.get("config") or {})
    teacher = _beside(base, str(job["teacher"]))
    init_model = config.student.init_model if config.student.init == "model" else None
    train = read_examples(base / job["train"])
    validation = read_examples(base / job["validation"]) if job.get("validation") else None
    workdir = base / job.get("workdir", "run")
    from .trainer import run  # torch and transformers load once the job is known to be sound

    callbacks = ConsoleCallbacks(every=config.log_every_steps)
    signal.signal(signal.SIGINT, callbacks.request_stop)
    result = run(
        config,
        teacher=teacher,
        train=train,
        validation=validation,
        workdir=workdir,
        callbacks=callbacks,
        init_model=_beside(base, init_model) if init_model else None,
    )
    print(
        json.dumps(
            {
                "export_dir": str(result.export_dir),
                "onnx_files": [str(p) for p in result.onnx_files],
                "metrics": result.metrics,
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.distill")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="train, evaluate and export one job")
    run_cmd.add_argument("job", type=Path, help="path to job.json")
    args = parser.parse_args(argv)
    try:
        return run_job(args.job)
    except Stopped as exc:
        print(f"stopped: {exc}; run the same command again to resume", file=sys.stderr)
        return 130
    except DistillError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"error [config_invalid]: config.{loc}: {err['msg']}", file=sys.stderr)
        return 2
    except RecordError as exc:
        print(f"error [dataset_invalid]: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error [job_invalid]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
