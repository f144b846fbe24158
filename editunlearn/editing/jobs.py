"""Pipeline job bodies of the key-statistics rules (kept apart from ``stats`` so the unlearning
jobs, which import ``stats``, do not depend on the pipeline glue)."""

from __future__ import annotations

import time

from ..pipeline import load_for_job, seed_everything
from .stats import (CORPUS_DEFAULTS, check_corpus, compute_key_stats, load_corpus, sample_corpus,
                    save_corpus, wikitext_corpus)


def corpus_job(*, model_dir, spec_params, corpus, n_samples, settings, device, out_path, log) -> None:
    check_corpus(corpus)
    settings = {**CORPUS_DEFAULTS, **settings}
    seed_everything(settings["seed"])
    started = time.perf_counter()
    if corpus == "model_samples":
        _, model, tokenizer = load_for_job(spec_params, model_dir, device)
        ids = sample_corpus(model, tokenizer, n_samples, settings["sample_tokens"],
                            settings["batch_size"], settings["seed"], settings["top_p"])
    else:
        from transformers import AutoTokenizer

        ids = wikitext_corpus(AutoTokenizer.from_pretrained(model_dir), n_samples,
                              settings["sample_tokens"], settings["seed"])
    seconds = time.perf_counter() - started
    meta = {"corpus": corpus, "model": spec_params["name"], "n_samples": n_samples,
            "sample_tokens": settings["sample_tokens"], "seed": settings["seed"],
            "top_p": settings["top_p"] if corpus == "model_samples" else None,
            "seconds": round(seconds, 1)}
    save_corpus(out_path, ids, meta)
    log.info("corpus %s: %d chunks x %d tokens in %.1f s", corpus, ids.shape[0], ids.shape[1], seconds)


def key_stats_job(*, model_dir, spec_params, corpus_path, layers, settings, device, out_path, log,
                  start_patch=None) -> None:
    settings = {**CORPUS_DEFAULTS, **settings}
    spec, model, _ = load_for_job(spec_params, model_dir, device, start_patch)
    ids, corpus_meta = load_corpus(corpus_path)
    modules = {l: model.get_submodule(spec.module_name("mlp_down", l)) for l in sorted(set(layers))}
    started = time.perf_counter()
    stats = compute_key_stats(model, modules, ids, settings["stats_batch_size"])
    seconds = time.perf_counter() - started
    stats.meta.update({"corpus": corpus_meta, "model": spec.name,
                       "start": "fine-tuned" if start_patch else "base",
                       "seconds": round(seconds, 1)})
    stats.save(out_path)
    log.info("key statistics of layers %s: %d tokens in %.1f s", sorted(stats.mom2), stats.n_tokens,
             seconds)
