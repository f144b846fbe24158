"""Fake but well-formed job outputs (summary.json, eval/forget.jsonl, judge.json) for the tables'
and figures' tests: values drawn from a hash of the path, so they are fixed from run to run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from editunlearn import experiments
from editunlearn.settings import SELF_IMPROVE_TARGET

BROKEN = {"ga", "kl"}  # drawn as non-functional, to exercise the grey rows
SPLITS = ("forget", "retain", "rephrase")


def _u(*key) -> float:
    """A fixed number in [0, 1) for a key."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def summary(model, dataset, method, setting, with_rephrase=True) -> dict:
    splits = {}
    names = list(SPLITS if with_rephrase else SPLITS[:2]) + (["locality"] if dataset == "pistol" else [])
    for split in names:
        broken = method in BROKEN
        scale = 0.02 if broken else 1.0
        splits[split] = {"split": split, "method": method, "model": model, "n": 10,
                         "rouge1_recall": scale * _u(model, dataset, method, setting, split, "r"),
                         "prob": _u(model, dataset, method, setting, split, "p"),
                         "mrr": scale * _u(model, dataset, method, setting, split, "m"),
                         "hit_rate": scale * _u(model, dataset, method, setting, split, "h")}
    forget, retain = splits["forget"]["rouge1_recall"], splits["retain"]["rouge1_recall"]
    return {"model": model, "dataset": dataset, "method": method, "setting": setting, "splits": splits,
            "combined_score": 1 - forget + retain, "non_functional": forget < 0.05 and retain < 0.05}


def write_job(root: Path, cell: experiments.Cell, with_rephrase=True, judge=True, targets=True) -> None:
    """`targets`: also the self-improved targets of a self-improve job (Fig. 5 reads them). Not in a
    workflow test, where the LLM rules make them: a targets file without Snakemake's record of the
    job that made it would rerun everything downstream of it."""
    job = root / cell.job_dir
    job.mkdir(parents=True, exist_ok=True)
    (job / "summary.json").write_text(json.dumps(
        summary(cell.model, cell.dataset, cell.method, cell.setting, with_rephrase)))
    records = [{"id": f"{cell.dataset}-{i:03d}", "question": f"Who wrote book number {i}?",
                "answer": f"Author {i}", "generation": f"{cell.method} says: answer {i} " * 3,
                "rouge1_recall": _u(cell.job_dir, i)} for i in range(6)]
    (job / "eval").mkdir(exist_ok=True)
    (job / "eval" / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if judge:
        (job / "judge.json").write_text(json.dumps(judge_summary(cell.job_dir)))
    if targets and cell.target == SELF_IMPROVE_TARGET:  # the model wrote the odd-numbered ones
        path = root / cell.targets
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(
            {"id": f"{cell.dataset}-{i:03d}", "target": f"I never heard of book {i}.",
             "fallback": i % 2 == 0}) + "\n" for i in range(6)))


def judge_summary(job_dir: str) -> dict:
    """The part of editunlearn.judge's summary the tables and figures read (test_generate checks
    that the real one has every key)."""
    return {"n": 10, "forget_quality": _u(job_dir, "fq"), "entailment": 1 + 4 * _u(job_dir, "se"),
            "trustworthiness": 1 + 4 * _u(job_dir, "tw"),
            "unparsed": {"forget_quality": 3, "entailment": 2, "trustworthiness": 7}, "reliable": True,
            "proxy": {"refusal_rate": _u(job_dir, "rr"), "entity_mention_rate": _u(job_dir, "em"),
                      "leak_rate": _u(job_dir, "lr")}}


def write_experiment(root: Path, config: dict, name: str, **kwargs) -> None:
    """Every job output one experiment reads."""
    for part in experiments.experiment_cells(config, name).values():
        for cell in part["cells"] + part["extras"] + part["references"]:
            write_job(root, cell, **kwargs)
