# Evaluation of (start model + patch) on each split; a summary per job.


localrules:
    summarize_setting,  # a few JSON files: no cluster job


rule evaluate_split:
    input:
        unpack(start_inputs),
        patch=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/patch.safetensors",
        split=lambda w: f"resources/splits/{w.dataset}/{Setting.parse(w.setting).split_name}.json",
        code=evaluation_code_files(),
    output:
        records=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/eval/{{split}}.jsonl",
        summary=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/eval/{{split}}.summary.json",
    params:
        spec=lambda w: spec_params(w.model, evaluates=True),
        eval=config["eval"],
        device=config["device"],
    threads: model_job_threads("evaluate")
    resources:
        **model_job_resources("evaluate"),
    log:
        "logs/{model}/{dataset}/{method}/{setting}/eval_{split}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}/{setting}/{split}.tsv"
    script:
        "../scripts/evaluate_split.py"


rule summarize_setting:
    input:
        lambda w: [f"{job_dir(w)}/eval/{split}.summary.json" for split in eval_splits(w.dataset)],
    output:
        f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/summary.json",
    log:
        "logs/{model}/{dataset}/{method}/{setting}/summary.log",
    script:
        "../scripts/summarize_setting.py"


# The rephrased forget set (paper Table 2, "generalization"): the forget items asked with their
# LLM-rephrased question (rules/generate.smk), same answers, same metrics. A rule of its own so the
# other splits' jobs do not depend on the rephrases.
ruleorder: evaluate_rephrase > evaluate_split


rule evaluate_rephrase:
    input:
        unpack(start_inputs),
        patch=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/patch.safetensors",
        split=lambda w: f"resources/splits/{w.dataset}/{Setting.parse(w.setting).split_name}.json",
        rephrases="resources/generated/{dataset}/rephrases.jsonl",
        code=evaluation_code_files(),
    output:
        records=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/eval/rephrase.jsonl",
        summary=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/eval/rephrase.summary.json",
    params:
        spec=lambda w: spec_params(w.model, evaluates=True),
        eval=config["eval"],
        device=config["device"],
    threads: model_job_threads("evaluate")
    resources:
        **model_job_resources("evaluate"),
    log:
        "logs/{model}/{dataset}/{method}/{setting}/eval_rephrase.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}/{setting}/rephrase.tsv"
    script:
        "../scripts/evaluate_rephrase.py"
