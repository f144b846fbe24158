"""Per-request edit time and peak memory of the lifelong editors (GRACE, WISE) on the embedded model.

    .venv/bin/python benchmarks/lifelong_edit_speed.py [--method grace|wise|both] [--edits N]
                                                        [--threads T] [--device cpu|cuda]

Edits the first N factual questions one after another with refusal targets from
idontknow.jsonl, using the hyper-parameters the pipeline would use for smollm2-135m (config.yaml
`methods.<name>` + its `per_model` block). Needs resources/models/smollm2-135m and resources/data/
(`snakemake resources/models/smollm2-135m resources/data/factual_data.json`). Prints one JSON line
per method: seconds per edit (each, median, mean), optimisation steps are in the log, peak resident
memory of the process (and peak CUDA memory on a GPU). Run it on an otherwise idle machine: edit
times scale with the free cores. Each method runs in its own process so peaks do not mix.
"""

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time

from _embedded import MODEL, REPO, model_spec, repo_config


def run_one(method: str, edits: int, threads: int, device: str) -> dict:
    import torch

    from editunlearn.config import method_hparams
    from editunlearn.data import load_qa
    from editunlearn.methods import UnlearnContext, make_method
    from editunlearn.models import load_model
    from editunlearn.prompts import PromptFormatter

    torch.set_num_threads(threads)
    config = repo_config()
    spec = model_spec(config)
    model, tokenizer = load_model(spec, device)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    items = load_qa("factual", REPO / "resources/data")
    refusals = [line.strip() for line in (REPO / "resources/data/idontknow.jsonl").read_text().splitlines()
                if line.strip()]
    forget = [{**item, "target": refusals[i % len(refusals)]} for i, item in enumerate(items[:edits])]
    retain = items[edits:]
    hparams = method_hparams(config, method, MODEL)
    formatter = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)
    ctx = UnlearnContext(model, tokenizer, spec, formatter, forget, retain, hparams, seed=0,
                         log=logging.getLogger("editunlearn"))
    if torch.cuda.is_available() and model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    patch = make_method(method, hparams).unlearn(ctx)
    total = time.perf_counter() - start
    each = patch.info["edit_seconds"]
    out = {
        "method": method, "model": MODEL, "device": str(model.device), "threads": threads,
        "edits": edits, "module": patch.info["module"],
        "seconds_per_edit_median": round(statistics.median(each), 2),
        "seconds_per_edit_mean": round(statistics.mean(each), 2),
        "seconds_per_edit": each,
        "total_s": round(total, 1),  # includes set-up (WISE: out-of-scope activations)
        "peak_rss_mb_after_load": round(rss_loaded),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "patch_info": {k: v for k, v in patch.info.items() if k not in ("edit_seconds", "radii")},
    }
    if model.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["grace", "wise", "both"], default="both")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.worker:
        print(json.dumps(run_one(args.method, args.edits, args.threads, args.device)), flush=True)
        return
    methods = ["grace", "wise"] if args.method == "both" else [args.method]
    for method in methods:  # one process each: ru_maxrss is a per-process peak
        subprocess.run([sys.executable, __file__, "--worker", "--method", method,
                        "--edits", str(args.edits), "--threads", str(args.threads),
                        "--device", args.device], check=True)


if __name__ == "__main__":
    main()
