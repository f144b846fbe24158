"""What the chat template's default system message costs and changes on the embedded model.

    .venv/bin/python benchmarks/system_prompt.py [--limit N] [--threads 1]

SmolLM2's template inserts "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
when a prompt has no system message (`models.<name>.system_prompt: null`, the default); an empty
one (`system_prompt: ""`) keeps the template's structure without it. For both, on the factual
questions: prompt tokens, the base model's evaluation (Rouge1, Prob, seconds) and the time of a
GD training step (4 forget + 4 retain QA, LoRA as configured). Needs resources/models/smollm2-135m,
resources/data/ and resources/splits/factual/n40_s0.json. Prints one JSON line per setting.
"""

import argparse
import json
import statistics
import time

import torch

from _embedded import REPO, gd_batches, gd_step, load_embedded, repo_config

from editunlearn.config import method_hparams
from editunlearn.data import load_qa
from editunlearn.evaluate import evaluate_items
from editunlearn.lora import attach_lora, detach_lora, lora_parameters
from editunlearn.prompts import PromptFormatter


def step_seconds(model, formatter, hparams, steps: int) -> float:
    forget, retain = gd_batches(formatter, hparams["batch_size"])
    params = lora_parameters(model)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        gd_step(model, forget, retain, params)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N of the 217 questions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = repo_config()
    spec, model, tokenizer, _ = load_embedded(config)
    items = load_qa("factual", REPO / "resources/data")[: args.limit]
    hparams = method_hparams(config, "gd", spec.name)
    for label, system_prompt in (("template default", None), ("empty", "")):
        formatter = PromptFormatter(tokenizer, spec.chat_template, system_prompt)
        tokens = [len(tokenizer(formatter(item["question"]))["input_ids"]) for item in items]
        model.eval()
        start = time.perf_counter()
        records = evaluate_items(model, tokenizer, items, formatter, batch_size=spec.eval_batch_size,
                                 max_new_tokens=config["eval"]["max_new_tokens"])
        eval_s = time.perf_counter() - start
        lora = hparams["lora"]
        attach_lora(model, lora["r"], lora["alpha"], lora.get("target_modules"))
        model.train()
        step_s = step_seconds(model, formatter, hparams, args.steps)
        detach_lora(model, merge=False)
        print(json.dumps({
            "system_message": label, "questions": len(items), "threads": args.threads,
            "mean_prompt_tokens": round(statistics.mean(tokens), 1),
            "rouge1_recall": round(statistics.mean(r["rouge1_recall"] for r in records), 4),
            "prob": round(statistics.mean(r["prob"] for r in records), 4),
            "eval_s": round(eval_s, 1), "gd_step_s": round(step_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
