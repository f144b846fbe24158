# LLM-generated data (editunlearn/generate.py): rephrased questions for the rephrase attack (paper
# Table 2) and self-improvement refusal targets (paper §3.2). Which LLM answers is the config's
# `llm:` block with each task's `<task>.llm` overrides (editunlearn/llm.py): what is asked reaches
# the jobs as params (a change reruns them), how it is asked (timeouts, retries, concurrency, cache
# folder) is read at run time and reruns nothing. Answers are cached under `llm.cache_dir`, so a
# rerun never asks twice.

import editunlearn.generate as generate_module
import editunlearn.judge as judge_module
import editunlearn.textcheck as textcheck_module
from editunlearn.llm import ask_params, task_settings


GENERATE_CODE = code_inputs([generate_module.__file__, textcheck_module.__file__])  # prompts and checks
JUDGE_CODE = code_inputs([judge_module.__file__, textcheck_module.__file__])


def llm_backend(task):
    return {**config["llm"], **(config[task].get("llm") or {})}["backend"]


def _llm(task, w):
    """The task's merged LLM settings; self-improvement's null local model = the model under study."""
    return task_settings(config, task, w.model if task == "self_improve" else None)


def _under_study(task):
    return task == "self_improve" and {**config["llm"], **(config[task].get("llm") or {})}.get(
        "model") is None


def llm_inputs(task):
    """The local backend's model folder (and, for the model under study, the fine-tuning patch it
    starts from); nothing for the openai backend."""

    def inputs(w):
        s = _llm(task, w)
        if s["backend"] != "local":
            return {}
        out = {"llm_model": model_dir(s["model"])}
        if _under_study(task) and w.dataset in config["finetune"]["datasets"]:
            out["llm_start_patch"] = f"resources/finetuned/{w.model}/{w.dataset}.patch.safetensors"
        return out

    return inputs


def llm_params(task):
    """params of a generation job: what is asked, and the local model's registry settings."""
    return {
        "ask": lambda w: ask_params(config, task, w.model if task == "self_improve" else None),
        "spec": lambda w: spec_params(_llm(task, w)["model"]) if llm_backend(task) == "local" else None,
    }


def llm_threads(task):
    def threads(w):
        s = _llm(task, w)
        return job_resources(config, s["model"], "evaluate")["threads"] if s["backend"] == "local" else 1

    return threads


def llm_resources(task):
    """A local model asks for what its evaluation jobs ask for; the openai backend for no GPU and
    `llm_requests` = its concurrency: `snakemake --resources llm_requests=N` caps the requests in
    flight across all jobs (a job granted fewer runs with fewer threads)."""

    def value(key):
        def get(w):
            s = _llm(task, w)
            if s["backend"] == "local":
                return 0 if key == "llm_requests" else job_resources(config, s["model"], "evaluate")[key]
            return {"gpu": 0, "mem_mb": 2000, "runtime": 240, "gpu_model": None,
                    "llm_requests": s["concurrency"]}[key]

        return get

    return {key: value(key) for key in ("gpu", "mem_mb", "runtime", "gpu_model", "llm_requests")}


# light where they call a remote API (compute nodes rarely reach the internet); a local model on
# a cluster needs its GPU job like any evaluation
if llm_backend("rephrase") == "openai":

    localrules:
        rephrase,


if llm_backend("self_improve") == "openai":

    localrules:
        self_improve_targets,


rule rephrase:
    """A paraphrase of every question of the dataset (not only one split's forget items: any
    forget size and seed then reuses them, and a new split asks nothing)."""
    input:
        unpack(llm_inputs("rephrase")),
        qa=lambda w: f"resources/data/{DATASETS[w.dataset]}",
        code=GENERATE_CODE,
    output:
        rows="resources/generated/{dataset}/rephrases.jsonl",
        report="resources/generated/{dataset}/rephrases.report.json",
    params:
        **llm_params("rephrase"),
        max_attempts=config["rephrase"]["max_attempts"],
        retry_temperature=config["rephrase"]["retry_temperature"],
        device=config["device"],
    threads: llm_threads("rephrase")
    priority: CRITICAL_PATH_PRIORITY
    resources:
        **llm_resources("rephrase"),
    log:
        "logs/generated/{dataset}/rephrases.log",
    benchmark:
        "results/benchmarks/generate/{dataset}/rephrases.tsv"
    script:
        "../scripts/rephrase.py"


rule self_improve_targets:
    """Refusal targets written by the model under study (appendix B.1 prompt), validated, with
    the item's idk line where every attempt failed."""
    input:
        unpack(llm_inputs("self_improve")),
        split="resources/splits/{dataset}/n{n}_s{seed}.json",
        idk="resources/targets/{dataset}/n{n}_s{seed}/idk.jsonl",
        code=GENERATE_CODE,
    output:
        targets="resources/targets/{dataset}/n{n}_s{seed}/{model}/self-improve.jsonl",
        report="resources/targets/{dataset}/n{n}_s{seed}/{model}/self-improve.report.json",
    params:
        **llm_params("self_improve"),
        max_attempts=config["self_improve"]["max_attempts"],
        retry_temperature=config["self_improve"]["retry_temperature"],
        device=config["device"],
    threads: llm_threads("self_improve")
    resources:
        **llm_resources("self_improve"),
    log:
        "logs/targets/{dataset}/n{n}_s{seed}_{model}_self-improve.log",
    benchmark:
        "results/benchmarks/generate/{dataset}/n{n}_s{seed}_{model}_self-improve.tsv"
    script:
        "../scripts/self_improve.py"
