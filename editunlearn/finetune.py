"""The PISTOL stage: teach the starting model the dataset's facts before any unlearning.

The model is fine-tuned on every QA pair of the dataset (chat-formatted question, loss on the
answer tokens), with the same training loop as the unlearning baselines; the result is a patch over
the base model (LoRA factors by default, as PISTOL does, or the trained tensors). The paper needs
the fine-tuned model to answer its facts (Rouge1 1.0) before unlearning means anything, so the job
fails unless ROUGE-1 recall on all QA reaches ``min_rouge1``.
"""

from __future__ import annotations

import random
import time

from .evaluate import evaluate_items
from .methods import UnlearnContext
from .methods._finetune_loop import FINETUNE_DEFAULTS, FinetuneMethod, qa_pairs, train
from .metrics import summarize
from .patch import Patch
from .training import sequence_nll

# PISTOL's fine-tuning recipe; per-model overrides live in config.yaml (finetune.per_model)
TRAINING_DEFAULTS = {**FINETUNE_DEFAULTS, "lr": 1e-4, "epochs": 20, "batch_size": 16,
                     "warmup_ratio": 0.1, "weight_decay": 0.0}
GATE_DEFAULTS = {
    "min_rouge1": 0.95,  # ROUGE-1 recall on all QA the fine-tuned model must reach
    "monitor_items": 100,  # items scored after each monitored epoch (a seeded sample)
    "monitor_every": 1,  # epochs between monitoring passes
    "stop_at": 1.0,  # stop early once the monitored Rouge1 reaches this (1.0 = train all epochs
                     # unless perfect)
    "replay_factual": False,  # also train on the factual QA, to keep pretrained knowledge
    # the gate's own generation length, so that changing eval settings does not retrain the model
    "max_new_tokens": 32,
}
DEFAULTS = {**TRAINING_DEFAULTS, **GATE_DEFAULTS}


class FinetuneGateError(RuntimeError):
    pass


class LearnFacts(FinetuneMethod):
    """Plain supervised fine-tuning: minimise NLL of each item's answer."""

    name = "finetune"
    defaults = TRAINING_DEFAULTS
    items_label = "training"

    def loss_terms(self, run, items, _retain):
        return {"nll": sequence_nll(run.model, run.batch(qa_pairs(items))).mean()}


def finetune(model, tokenizer, spec, formatter, items: list[dict], factual: list[dict],
             hparams: dict, log, seed: int = 0) -> tuple[Patch, dict]:
    """Fine-tune on ``items``; return the patch and a report (curve, final scores, timings).
    Raises FinetuneGateError (with the report in its message) when the gate is not reached."""
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown fine-tune hyper-parameter(s) {unknown} (known: {', '.join(DEFAULTS)})")
    hp = {**DEFAULTS, **hparams}
    training = {k: hp[k] for k in TRAINING_DEFAULTS}
    monitor = random.Random(seed).sample(items, min(hp["monitor_items"], len(items)))
    train_items = items + (factual if hp["replay_factual"] else [])

    def score(subset, desc):
        records = evaluate_items(model, tokenizer, subset, formatter, batch_size=spec.eval_batch_size,
                                 max_new_tokens=hp["max_new_tokens"], progress=True, desc=desc)
        return summarize(records)

    curve = []
    start = time.perf_counter()

    def epoch_end(epoch: int) -> bool:
        if epoch % hp["monitor_every"] and epoch != hp["epochs"]:
            return False
        rouge = score(monitor, f"epoch {epoch}")["rouge1_recall"]
        curve.append({"epoch": epoch, "monitor_rouge1": rouge,
                      "seconds": round(time.perf_counter() - start, 1)})
        log.info("fine-tune epoch %d: Rouge1 on %d monitored items %.3f", epoch, len(monitor), rouge)
        return rouge >= hp["stop_at"]

    ctx = UnlearnContext(model, tokenizer, spec, formatter, forget=train_items, retain=[],
                         hparams=training, seed=seed, log=log)
    patch = train(LearnFacts(training), ctx, epoch_end=epoch_end)
    train_seconds = time.perf_counter() - start
    model.eval()
    final = score(items, "fine-tuned: all QA")
    factual_after = score(factual, "fine-tuned: factual") if factual else None
    report = {"hparams": hp, "curve": curve, "train_seconds": round(train_seconds, 1),
              "steps": patch.info["steps"], "rouge1": final["rouge1_recall"], "final": final,
              "factual_after": factual_after, "min_rouge1": hp["min_rouge1"],
              "passed": final["rouge1_recall"] >= hp["min_rouge1"]}
    patch.method = "finetune"
    patch.info["report"] = {k: report[k] for k in ("rouge1", "steps", "train_seconds")}
    return patch, report
