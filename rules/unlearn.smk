# One unlearning job per (model, dataset, method, setting); its output is a patch (only what changed).


rule unlearn:
    input:
        unpack(start_inputs),
        split=lambda w: f"resources/splits/{w.dataset}/{Setting.parse(w.setting).split_name}.json",
        targets=targets_file,
        method_code=lambda w: code_inputs(method_code_files(w.method)),
        key_stats=key_stats_file,  # editors only (rules/stats.smk)
    output:
        f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/patch.safetensors",
    params:
        spec=lambda w: spec_params(w.model),
        hparams=lambda w: method_hparams(config, w.method, w.model, w.dataset),
        device=config["device"],
    threads: model_job_threads("unlearn")
    resources:
        **model_job_resources("unlearn"),
    log:
        "logs/{model}/{dataset}/{method}/{setting}/unlearn.log",
    benchmark:
        "results/benchmarks/unlearn/{model}/{dataset}/{method}/{setting}.tsv"
    script:
        "../scripts/unlearn.py"
