"""Where one unlearning step's time goes on the embedded model: a GD step (forget and retain batch
of the configured size, LoRA as configured for smollm2-135m) timed and profiled per operator,
and the FLOP rate it reaches.

    .venv/bin/python benchmarks/step_profile.py [--threads 1] [--steps 5]

Needs resources/models/smollm2-135m and resources/splits/factual/n40_s0.json (`snakemake
resources/splits/factual/n40_s0.json resources/models/smollm2-135m`). Prints the per-operator
table and one JSON line. Run it on an otherwise idle machine.
"""

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from _embedded import MODEL, gd_batches, gd_step, load_embedded, repo_config

from editunlearn.config import method_hparams
from editunlearn.lora import attach_lora, lora_parameters


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="as the pipeline's unlearn jobs run here")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = repo_config()
    hparams = method_hparams(config, "gd", MODEL)
    spec, model, tokenizer, formatter = load_embedded(config)
    size = hparams["batch_size"]
    forget, retain = gd_batches(formatter, size)
    lora = hparams["lora"]
    attach_lora(model, lora["r"], lora["alpha"], lora.get("target_modules"))
    params = lora_parameters(model)
    model.train()

    def step():
        gd_step(model, forget, retain, params)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    tokens = int(forget.attention_mask.sum() + retain.attention_mask.sum())
    n_params = sum(p.numel() for p in model.parameters())
    # forward 2 FLOP per weight per token; backward to the activations another 2 (base weights
    # are frozen, so no weight gradients except LoRA's, which are negligible)
    flops = 4 * n_params * tokens
    print(json.dumps({"model": MODEL, "threads": args.threads, "batch": f"{size} forget + {size} retain",
                      "tokens": tokens, "prompt_tokens_share": round(
                          1 - float((forget.labels != -100).sum() + (retain.labels != -100).sum()) / tokens, 2),
                      "step_s": round(seconds, 2), "matmul_share": round(matmul / total, 2),
                      "gflops_per_s": round(flops / seconds / 1e9, 1)}))


if __name__ == "__main__":
    main()
