"""Evaluation speed on the embedded model: batched engine vs one question at a time.

    .venv/bin/python benchmarks/eval_speed.py [--limit N] [--batch-size B]

Needs resources/models/smollm2-135m and resources/data/ (run `make reproduce` or
`snakemake resources/models/smollm2-135m resources/data/factual_data.json` first). Run it on an
otherwise idle machine; it prints one JSON line with both timings and their ratio.
"""

import argparse
import json
import resource
import time

import torch

from _embedded import REPO, model_spec, repo_config

from editunlearn.data import load_qa
from editunlearn.evaluate import evaluate_items
from editunlearn.models import load_model
from editunlearn.prompts import PromptFormatter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N of the 217 questions")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's eval_batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: config eval.max_new_tokens")
    args = parser.parse_args()

    config = repo_config()
    spec = model_spec(config)
    max_new = args.max_new_tokens or config["eval"]["max_new_tokens"]
    batch = args.batch_size or spec.eval_batch_size
    torch.set_num_threads(torch.get_num_threads())
    model, tokenizer = load_model(spec, "cpu")
    items = load_qa("factual", REPO / "resources/data")[: args.limit]
    fmt = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)

    timings = {}
    for label, size in (("batched", batch), ("one_at_a_time", 1)):
        start = time.perf_counter()
        records = evaluate_items(model, tokenizer, items, fmt, batch_size=size, max_new_tokens=max_new)
        timings[label] = time.perf_counter() - start
        timings[f"{label}_rouge1"] = sum(r["rouge1_recall"] for r in records) / len(records)
    print(json.dumps({
        "questions": len(items), "batch_size": batch, "max_new_tokens": max_new,
        "threads": torch.get_num_threads(),
        "batched_s": round(timings["batched"], 1),
        "one_at_a_time_s": round(timings["one_at_a_time"], 1),
        "batched_q_per_s": round(len(items) / timings["batched"], 2),
        "one_at_a_time_q_per_s": round(len(items) / timings["one_at_a_time"], 2),
        "speedup": round(timings["one_at_a_time"] / timings["batched"], 2),
        "rouge1_batched": round(timings["batched_rouge1"], 4),
        "rouge1_one_at_a_time": round(timings["one_at_a_time_rouge1"], 4),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }))


if __name__ == "__main__":
    main()
