"""Glue between Snakemake jobs and the library: logging, threads, seeding, and the job bodies the
thin ``scripts/`` call. Kept here (not in scripts) so it is tested and importable."""

from __future__ import annotations

import logging
import random
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

LOG = logging.getLogger("editunlearn")


@contextmanager
def job(snakemake, model_job: bool = True):
    """Send the job's stderr and logging to its log file; on failure, also show the error's
    message on the console (where Snakemake's own message appears), not only in the log.
    ``model_job=False`` (tables, figures) skips the GPU claim and torch's thread setting, which
    would import torch for nothing."""
    console = sys.stderr
    log_path = snakemake.log[0] if snakemake.log else None
    handle = open(log_path, "w", buffering=1, encoding="utf-8") if log_path else console
    sys.stderr = handle
    logging.basicConfig(stream=handle, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        if model_job:
            from .resources import claim_gpus

            # on a multi-GPU machine without a scheduler: a GPU no other job holds (before CUDA starts)
            claim_gpus(getattr(snakemake.resources, "gpu", 0),
                       str(getattr(snakemake.params, "device", "cpu")))
            threads = getattr(snakemake, "threads", 1)
            try:
                import torch

                torch.set_num_threads(max(1, int(threads)))
            except ImportError:
                pass
        yield LOG
    except BaseException as exc:
        traceback.print_exc(file=handle)
        print(f"\n[{snakemake.rule}] {type(exc).__name__}: {exc}\n", file=console)
        raise
    finally:
        sys.stderr = console
        if handle is not console:
            handle.close()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_for_job(spec_params: dict, model_dir: str, device: str, start_patch: str | None = None):
    """The model a job starts from: the base model, plus the fine-tune patch where the dataset
    has a fine-tuning stage (PISTOL)."""
    from .models import ModelSpec, load_model
    from .patch import Patch

    spec = ModelSpec(source="local", path=str(model_dir), **spec_params)
    model, tokenizer = load_model(spec, device)
    if start_patch:
        Patch.load(start_patch).apply(model)
        LOG.info("starting model: %s + %s", spec.name, start_patch)
    return spec, model, tokenizer


def finetune_job(*, model_dir, qa_path, factual_path, dataset, spec_params, hparams, device,
                 patch_path, report_path) -> None:
    from .data import load_qa
    from .finetune import finetune
    from .io import write_json
    from .prompts import PromptFormatter

    seed_everything(0)
    spec, model, tokenizer = load_for_job(spec_params, model_dir, device)
    items = load_qa(dataset, Path(qa_path).parent)
    factual = load_qa("factual", Path(factual_path).parent) if dataset != "factual" else []
    formatter = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)
    patch, report = finetune(model, tokenizer, spec, formatter, items, factual, hparams, LOG)
    write_json(report_path, report)  # a log file: kept even when the gate fails
    LOG.info("fine-tune report: %s", report)
    if not report["passed"]:
        curve = ", ".join(f"{c['epoch']}: {c['monitor_rouge1']:.2f}" for c in report["curve"])
        raise RuntimeError(
            f"fine-tuning {spec.name} on {dataset} reached Rouge1 {report['rouge1']:.3f} on all "
            f"{len(items)} QA, below the gate {report['min_rouge1']} (config key "
            f"'finetune.per_model.{spec.name}.min_rouge1'). Monitored Rouge1 by epoch: {curve}. "
            f"Train longer or with a higher learning rate, or lower the gate; the report is in "
            f"{report_path}. No fine-tuned model was saved, so no PISTOL result builds on it.")
    patch.save(patch_path)


def unlearn_job(*, model_dir, split_path, targets_path, method, setting, spec_params, hparams,
                device, out_path, start_patch=None, key_stats=None) -> None:
    from .data import split_items
    from .io import read_json, read_jsonl
    from .methods import UnlearnContext, make_method
    from .prompts import PromptFormatter
    from .settings import Setting

    setting = Setting.parse(setting)
    seed_everything(setting.seed)
    spec, model, tokenizer = load_for_job(spec_params, model_dir, device, start_patch)
    split = read_json(split_path)
    targets = {row["id"]: row["target"] for row in read_jsonl(targets_path)}
    forget = [{**item, "target": targets[item["id"]]} for item in split_items(split, "forget")]
    retain = split_items(split, "retain")
    formatter = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)
    runner = make_method(method, hparams)
    LOG.info("method %s on %s, setting %s: %d forget, %d retain items; hparams %s",
             method, spec.name, setting, len(forget), len(retain), hparams)
    load_base = (lambda: load_for_job(spec_params, model_dir, device)[1]) if start_patch else None
    ctx = UnlearnContext(model, tokenizer, spec, formatter, forget, retain, hparams,
                         seed=setting.seed, merge=setting.merge, log=LOG, load_base_model=load_base,
                         key_stats=key_stats or None)
    start = time.perf_counter()
    patch = runner.unlearn(ctx)
    patch.info.setdefault("hparams", hparams)
    patch.info.setdefault("setting", str(setting))
    patch.info["seconds"] = round(time.perf_counter() - start, 3)
    patch.save(out_path)
    LOG.info("patch: %d tensors, %d adaptors, %.1f s", len(patch.tensors), len(patch.adapters),
             patch.info["seconds"])


def evaluate_job(*, model_dir, patch_path, split_path, split, spec_params, eval_params, device,
                 records_path, summary_path, start_patch=None, rephrases_path=None) -> None:
    """One split's records and summary. ``split="rephrase"``: the forget items asked with their
    rephrased questions from ``rephrases_path``."""
    from .data import split_items
    from .evaluate import evaluate_items
    from .io import read_json, read_jsonl, write_json, write_jsonl
    from .metrics import summarize
    from .patch import Patch
    from .prompts import PromptFormatter

    spec, model, tokenizer = load_for_job(spec_params, model_dir, device, start_patch)
    patch = Patch.load(patch_path)
    patch.apply(model)
    if split == "rephrase":
        from .generate import rephrased_items

        if rephrases_path is None:
            raise ValueError("the rephrase split needs the rephrases file (rules/generate.smk)")
        items = rephrased_items(split_items(read_json(split_path), "forget"),
                                read_jsonl(rephrases_path))
    else:
        items = split_items(read_json(split_path), split)
    if eval_params.get("max_items"):
        items = items[: eval_params["max_items"]]
    formatter = PromptFormatter(tokenizer, spec.chat_template, spec.system_prompt)
    start = time.perf_counter()
    records = evaluate_items(model, tokenizer, items, formatter, batch_size=spec.eval_batch_size,
                             max_new_tokens=eval_params["max_new_tokens"],
                             top_k=eval_params["top_k"], progress=True, desc=split)
    seconds = time.perf_counter() - start
    summary = {"split": split, "method": patch.method, "model": spec.name,
               "start": "fine-tuned" if start_patch else "base", **summarize(records),
               "seconds": round(seconds, 2)}
    LOG.info("%s: %s", split, summary)
    write_jsonl(records_path, records)
    write_json(summary_path, summary)


def summarize_setting(summary_paths: list[str], out_path: str) -> None:
    """One summary per job: the split summaries plus the paper's derived scores."""
    from .io import read_json, write_json
    from .metrics import combined_score, is_non_functional

    splits = {}
    for path in summary_paths:
        summary = read_json(path)
        # no timings: a job that reruns to the same numbers must leave this file byte-identical,
        # so that Snakemake (which compares checksums) redraws no table or figure
        summary.pop("seconds", None)
        splits[summary["split"]] = summary
    parts = Path(out_path).parts
    out = {"model": parts[-5], "dataset": parts[-4], "method": parts[-3], "setting": parts[-2],
           "splits": splits}
    if "forget" in splits and "retain" in splits:
        forget, retain = splits["forget"]["rouge1_recall"], splits["retain"]["rouge1_recall"]
        out["combined_score"] = combined_score(forget, retain)
        out["non_functional"] = is_non_functional(forget, retain)
    write_json(out_path, out)


# --- LLM-generated data and judging (editunlearn/llm.py, generate.py, judge.py) -----------------


def llm_job(snakemake, task: str):
    """The job's LLM: what to ask from its params, how to ask from the config (transport settings
    never change an answer, so they are not params and changing them reruns nothing), at most as
    many requests in flight as the job was granted ``llm_requests``."""
    from .llm import TRANSPORT_KEYS, LLMSettings, make_llm, task_settings

    model = getattr(snakemake.wildcards, "model", None) if task == "self_improve" else None
    merged = task_settings(snakemake.config, task, model)
    values = {**{k: merged[k] for k in TRANSPORT_KEYS if k in merged}, **snakemake.params.ask}
    granted = int(getattr(snakemake.resources, "llm_requests", 0) or 0)
    if granted:
        values["concurrency"] = min(values.get("concurrency", granted), granted)
    overridden = snakemake.config.get(task, {}).get("llm") or {}
    settings = LLMSettings.from_dict(values, task, overridden)
    return make_llm(settings, LOG, model_dir=snakemake.input.get("llm_model"),
                    spec_params=snakemake.params.spec, device=str(snakemake.params.device),
                    start_patch=snakemake.input.get("llm_start_patch"))


def rephrase_job(*, llm, qa_path, dataset, max_attempts, retry_temperature, rows_path,
                 report_path) -> None:
    from .data import load_qa
    from .generate import rephrase_rows
    from .io import write_json, write_jsonl

    items = load_qa(dataset, Path(qa_path).parent)
    start = time.perf_counter()
    rows, report = rephrase_rows(items, llm, max_attempts, LOG, retry_temperature)
    report["seconds"] = round(time.perf_counter() - start, 2)
    LOG.info("rephrases of %s: %s", dataset, report)
    write_json(report_path, report)
    write_jsonl(rows_path, rows)


def self_improve_job(*, llm, split_path, idk_path, max_attempts, retry_temperature, targets_path,
                     report_path) -> None:
    from .data import split_items
    from .generate import self_improve_rows
    from .io import read_json, read_jsonl, write_json, write_jsonl

    forget = split_items(read_json(split_path), "forget")
    idk = {row["id"]: row["target"] for row in read_jsonl(idk_path)}
    start = time.perf_counter()
    rows, report = self_improve_rows(forget, idk, llm, max_attempts, LOG, retry_temperature)
    report["seconds"] = round(time.perf_counter() - start, 2)
    LOG.info("self-improved targets: %s", report)
    write_json(report_path, report)
    write_jsonl(targets_path, rows)


def judge_job(*, llm, records_path, max_attempts, retry_temperature, rows_path,
              summary_path, min_parsed=0.5) -> None:
    from .io import read_jsonl, write_json, write_jsonl
    from .judge import judge_records

    records = read_jsonl(records_path)
    start = time.perf_counter()
    rows, summary = judge_records(records, llm, max_attempts, LOG, retry_temperature, min_parsed)
    parts = Path(summary_path).parts
    summary = {"model": parts[-5], "dataset": parts[-4], "method": parts[-3], "setting": parts[-2],
               "split": Path(records_path).stem, **summary,
               "seconds": round(time.perf_counter() - start, 2)}
    LOG.info("judge: %s", summary)
    write_jsonl(rows_path, rows)
    write_json(summary_path, summary)
