# The PISTOL stage: each model learns the dataset's facts before unlearning (a patch over the base
# model). The job fails, and nothing downstream runs, if the model does not reach the Rouge1 gate.


rule finetune:
    input:
        model=lambda w: model_dir(w.model),
        qa=lambda w: f"resources/data/{DATASETS[w.dataset]}",
        factual="resources/data/factual_data.json",
        code=finetune_code_files(),
    output:
        patch="resources/finetuned/{model}/{dataset}.patch.safetensors",
    params:
        spec=lambda w: spec_params(w.model, evaluates=True),
        hparams=lambda w: finetune_hparams(w.model),
        device=config["device"],
    threads: model_job_threads("finetune")
    priority: CRITICAL_PATH_PRIORITY
    resources:
        **model_job_resources("finetune"),
    log:
        main="logs/finetune/{model}/{dataset}.log",
        report="logs/finetune/{model}/{dataset}.report.json",
    benchmark:
        "results/benchmarks/finetune/{model}/{dataset}.tsv"
    script:
        "../scripts/finetune.py"
