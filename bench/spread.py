"""How far a student's token states spread after task distillation, layer by layer, beside
the teacher's: the check that found why a random start collapses in a short intermediate stage.

One engine run of tinybert-4l-312d on a dataset (default rt-polarity, cut as bench/quality.py
cuts it), with the fine-tuned teacher from --teacher (bench/quality.py --workdir DIR leaves it
in DIR/<dataset>/teacher) or, without one, fine-tuned here first. Then, on --sample test texts:

  token_std  per dimension, the standard deviation of the states of all real tokens, averaged
             over dimensions (how much tokens differ at all)
  cls_std    the same over the [CLS] states of the sampled texts (what the pooler sees)
  mean_norm  the norm of the mean token state; near the norm of one state (sqrt(width) after
             LayerNorm) when every token has collapsed onto one vector

    python bench/spread.py --teacher /tmp/q/rt-polarity/teacher --intermediate-epochs 1
    python bench/spread.py --teacher /tmp/q/rt-polarity/teacher --intermediate-epochs 5 \\
        --prediction-epochs 1

Prints one line per layer and writes bench/results/spread-<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import quality as Q
import torch
from _common import RESULTS_DIR, log, write_json

from contract.config import DistillationConfig, LossWeights, StageConfig, StudentConfig
from workers.distill.layer_map import layer_map
from workers.distill.trainer import Event, Progress, run


class Losses:
    """Engine callbacks that keep every step's loss components."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def on_config(self, config: Any) -> None:
        pass

    def on_progress(self, p: Progress) -> None:
        if not p.losses:
            return
        self.rows.append({"stage": p.stage, "step": p.step, **p.losses})
        if p.step % 25 == 0:
            log(
                f"{time.perf_counter() - self.started:.0f} s {p.stage} {p.step}/{p.total_steps} "
                + " ".join(f"{k} {v:.4f}" for k, v in p.losses.items())
            )

    def on_event(self, e: Event) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def spread(model_dir: Path, tokenizer_dir: Path, texts: list[str], max_length: int) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    enc = AutoTokenizer.from_pretrained(tokenizer_dir)(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states
    real = enc["attention_mask"].bool()
    layers = []
    for x in states:  # [0] is the embedding output
        cls, tokens = x[:, 0], x[real]
        layers.append(
            {
                "token_std": float(tokens.std(0).mean()),
                "cls_std": float(cls.std(0).mean()),
                "mean_norm": float(tokens.mean(0).norm()),
                "state_norm": float(cls.norm(dim=-1).mean()),
            }
        )
    return layers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="rt-polarity")
    p.add_argument("--teacher", type=Path, help="a fine-tuned teacher folder; else fine-tune one")
    p.add_argument("--init", default="random", help="student.init")
    p.add_argument("--intermediate-epochs", type=int, default=1)
    p.add_argument("--prediction-epochs", type=int, default=0, help="0: no prediction stage")
    p.add_argument(
        "--learning-rate",
        type=float,
        default=Q.SCRATCH_LEARNING_RATE,
        help="both stages; 0 = the engine recipe's",
    )
    p.add_argument("--sample", type=int, default=256, help="test texts to measure on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/distillery-spread"))
    p.add_argument("--name", default=None, help="default: init-iN-pM")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    name = a.name or f"{a.init}-i{a.intermediate_epochs}-p{a.prediction_epochs}"
    s, _ = Q.parse_args(["--datasets", a.dataset, "--threads", str(a.threads)])
    train, dev, test = Q.splits(s, a.dataset)
    teacher = a.teacher or Q.finetune_teacher(a.dataset, train, dev, s=s, work=a.workdir)[0]

    def stage(epochs: int) -> StageConfig:
        if not epochs:
            return StageConfig(enabled=False)
        return StageConfig(epochs=epochs, learning_rate=a.learning_rate or None)

    config = Q.base_config(
        s,
        student=StudentConfig(preset="tinybert-4l-312d", init=a.init),  # type: ignore[arg-type]
        distillation=DistillationConfig(
            intermediate=stage(a.intermediate_epochs),
            prediction=stage(a.prediction_epochs),
            weights=LossWeights(),
        ),
    )
    losses = Losses()
    result = run(
        config,
        teacher=str(teacher),
        train=train,
        validation=dev,
        workdir=a.workdir / name,
        callbacks=losses,
    )
    texts = [e.text for e in test[: a.sample]]
    measured = {
        "teacher": spread(teacher, teacher, texts, s.max_seq_length),
        "student": spread(result.export_dir, teacher, texts, s.max_seq_length),
    }
    # student layer m beside the teacher layer g(m) it was matched to (0: the embeddings)
    mapping = [
        0,
        *layer_map(
            "uniform",
            teacher_layers=len(measured["teacher"]) - 1,
            student_layers=len(measured["student"]) - 1,
        ),
    ]
    print(
        f"\n{name}: student layer (teacher layer): token_std teacher / student, "
        "cls_std teacher / student, mean_norm/state_norm teacher | student"
    )
    for m, st in enumerate(measured["student"]):
        t = measured["teacher"][mapping[m]]
        print(
            f"  {m} ({mapping[m]}): {t['token_std']:.3f} / {st['token_std']:.3f}   "
            f"{t['cls_std']:.3f} / {st['cls_std']:.3f}   "
            f"{t['mean_norm']:.1f}/{t['state_norm']:.1f} | "
            f"{st['mean_norm']:.1f}/{st['state_norm']:.1f}"
        )
    payload: dict[str, Any] = {
        "settings": {
            **vars(a),
            "teacher": str(teacher),
            "workdir": str(a.workdir),
            "train_examples": len(train),
            "max_seq_length": s.max_seq_length,
        },
        "last_losses": {
            stage: next(r for r in reversed(losses.rows) if r["stage"] == stage)
            for stage in {r["stage"] for r in losses.rows}
        },
        "spread": measured,
    }
    if a.prediction_epochs:
        payload["test"] = Q.score(result.export_dir, test, s)["metrics"]
        print(f"test: {payload['test']}")
    out = RESULTS_DIR / f"spread-{name}.json"
    write_json(out, payload)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
