"""Editing cost on the embedded model: per-request edit time and peak memory of ROME, MEMIT and
AlphaEdit, and the time of the key statistics (corpus sampling + one statistics pass).

    .venv/bin/python benchmarks/edit_speed.py [--threads 2] [--edits 5] [--stats-samples 1000]
                                              [--methods rome memit alphaedit] [--stats FILE]

Needs resources/models/smollm2-135m, resources/splits/factual/n40_s0.json and its idk targets
(`snakemake results/smollm2-135m/factual/base/n40_s0/patch.safetensors` makes them). Uses the
hyper-parameters config.yaml gives smollm2-135m. Each method runs in a fresh process, so its
peak RSS is its own (model + editing). The statistics are computed here and kept in a temporary
file in benchmarks/out/ (deleted at the end), unless --stats names the pipeline's own
(resources/stats/smollm2-135m/base/model_samples_n1000.safetensors; its cost is then the key_corpus
and key_stats rows of results/benchmarks/); the summary is benchmarks/out/edit_speed.json. Goal: ROME under 10 s median per edit on 2
idle cores. On a busy machine use --threads 1 (2 threads contending with other jobs were ~8x
slower than 1 here).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _embedded import MODEL, REPO, model_spec, repo_config

from editunlearn.config import method_hparams
from editunlearn.editing.stats import CORPUS_DEFAULTS, compute_key_stats, sample_corpus
from editunlearn.io import read_json, read_jsonl, write_json
from editunlearn.models import load_model



def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(threads):
    torch.set_num_threads(threads)
    config = repo_config()
    spec = model_spec(config)
    model, tokenizer = load_model(spec, "cpu")
    return config, spec, model, tokenizer


def key_stats(args, config, spec, model, tokenizer, out_path=None):
    """Sample the corpus and compute the statistics of every layer the editors use."""
    settings = {**CORPUS_DEFAULTS, **config.get("key_stats", {})}
    layers = sorted({l for m in ("rome", "memit", "alphaedit")
                     for l in method_hparams(config, m, MODEL)["layers"]})
    start = time.perf_counter()
    ids = sample_corpus(model, tokenizer, args.stats_samples, settings["sample_tokens"],
                        settings["batch_size"], settings["seed"], settings["top_p"])
    sampled = time.perf_counter() - start
    modules = {l: model.get_submodule(spec.module_name("mlp_down", l)) for l in layers}
    start = time.perf_counter()
    stats = compute_key_stats(model, modules, ids, settings["stats_batch_size"])
    passed = time.perf_counter() - start
    if out_path:
        stats.save(out_path)
    return {"stats_samples": args.stats_samples, "tokens_per_sample": ids.shape[1], "layers": layers,
            "corpus_sampling_s": round(sampled, 1), "stats_pass_s": round(passed, 1)}


def worker(args):
    """One method, in its own process: edit the first --edits forget items sequentially."""
    from editunlearn.methods import UnlearnContext, make_method
    from editunlearn.prompts import PromptFormatter

    config, spec, model, tokenizer = setup(args.threads)
    loaded_rss = peak_rss_mb()
    split = read_json(REPO / "resources/splits/factual/n40_s0.json")
    targets = {r["id"]: r["target"] for r in read_jsonl(REPO / "resources/targets/factual/n40_s0/idk.jsonl")}
    forget = [{**it, "target": targets[it["id"]]} for it in split["forget"][: args.edits]]
    hparams = method_hparams(config, args.worker, MODEL)
    ctx = UnlearnContext(model, tokenizer, spec, PromptFormatter(tokenizer, spec.chat_template,
                                                                 spec.system_prompt),
                         forget, [], hparams, key_stats=args.stats_file)
    start = time.perf_counter()
    patch = make_method(args.worker, hparams).unlearn(ctx)
    total = time.perf_counter() - start
    seconds = [e["seconds"] for e in patch.info["edits"]]
    print(json.dumps({
        "method": args.worker, "edits": len(seconds), "median_s": round(statistics.median(seconds), 2),
        "min_s": min(seconds), "max_s": max(seconds), "total_s": round(total, 1),
        "rss_after_load_mb": round(loaded_rss), "peak_rss_mb": round(peak_rss_mb()),
        "target_nll_after_edit": [e["nll_after_edit"][0] for e in patch.info["edits"]],
    }))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--edits", type=int, default=5, help="sequential edits per method")
    parser.add_argument("--stats-samples", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--stats", help="existing key statistics to edit with (skips computing them)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--stats-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    out_dir = REPO / "benchmarks/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"model": MODEL, "threads": args.threads}
    if args.stats:
        stats_file = Path(args.stats)
        summary["key_stats"] = {"file": str(stats_file)}
    else:
        stats_file = out_dir / "edit_speed_stats.safetensors"
        config, spec, model, tokenizer = setup(args.threads)
        summary["key_stats"] = key_stats(args, config, spec, model, tokenizer, stats_file)
        print(json.dumps(summary["key_stats"]), flush=True)
        del model
    summary["methods"] = []
    for method in args.methods:
        proc = subprocess.run([sys.executable, __file__, "--worker", method, "--threads", str(args.threads),
                               "--edits", str(args.edits), "--stats-file", str(stats_file)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        summary["methods"].append(result)
    if not args.stats:
        stats_file.unlink(missing_ok=True)
    write_json(out_dir / "edit_speed.json", summary)


if __name__ == "__main__":
    main()
