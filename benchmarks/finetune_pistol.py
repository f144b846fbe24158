"""The PISTOL fine-tuning stage on the embedded model: wall time, peak memory and the learning curve.

    .venv/bin/python benchmarks/finetune_pistol.py [--hparams '{"lr": 3e-4}'] [--label NAME]
    .venv/bin/python benchmarks/finetune_pistol.py --steps 4   # per-step speed only, no curve

Hyper-parameters start from config.yaml (finetune.hparams + finetune.per_model.smollm2-135m) and
the --hparams JSON overrides them. Needs resources/models/smollm2-135m and resources/data/ (run
`make reproduce` first). Run it on an otherwise idle machine: it reports one JSON line and writes
the full report (curve, final scores on all 400 PISTOL QA and on the 217 factual QA) to
results/benchmarks/finetune_pistol/<label>.json.
"""

import argparse
import json
import logging
import resource
import sys
import time

import torch

from _embedded import MODEL, REPO, model_spec, repo_config

from editunlearn.data import load_qa
from editunlearn.finetune import LearnFacts, TRAINING_DEFAULTS, finetune
from editunlearn.io import write_json
from editunlearn.methods import UnlearnContext
from editunlearn.methods._finetune_loop import train
from editunlearn.models import load_model
from editunlearn.prompts import PromptFormatter



def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hparams", default="{}", help="JSON overriding the configured recipe")
    parser.add_argument("--label", default="configured")
    parser.add_argument("--steps", type=int, default=0,
                        help="only time this many optimiser steps (no evaluation)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    log = logging.getLogger("finetune_pistol")

    config = repo_config()
    spec = model_spec(config)
    hparams = {**config["finetune"]["hparams"], **config["finetune"]["per_model"].get(MODEL, {}),
               **json.loads(args.hparams)}
    torch.manual_seed(0)
    model, tokenizer = load_model(spec, "cpu")
    formatter = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)
    items = load_qa("pistol", REPO / "resources/data")
    factual = load_qa("factual", REPO / "resources/data")
    result = {"label": args.label, "hparams": hparams, "threads": torch.get_num_threads()}

    start = time.perf_counter()
    if args.steps:
        training = {k: v for k, v in {**TRAINING_DEFAULTS, **hparams}.items() if k in TRAINING_DEFAULTS}
        n = args.steps * training["batch_size"] * training["gradient_accumulation_steps"]
        training["epochs"] = 1
        ctx = UnlearnContext(model, tokenizer, spec, formatter, forget=items[:n], retain=[],
                             hparams=training, log=log)
        train(LearnFacts(training), ctx)
        result["seconds_per_step"] = round((time.perf_counter() - start) / args.steps, 2)
    else:
        _, report = finetune(model, tokenizer, spec, formatter, items, factual, hparams, log)
        result.update({k: report[k] for k in ("rouge1", "passed", "train_seconds", "steps", "curve")})
        result["factual_rouge1_after"] = report["factual_after"]["rouge1_recall"]
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_json(REPO / f"results/benchmarks/finetune_pistol/{args.label}.json", {**result, "report": report})
    result["peak_rss_gb"] = round(peak_rss_gb(), 2)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    if "curve" in result:
        print(json.dumps(result["curve"]))


if __name__ == "__main__":
    main()
