# Models: the embedded SmolLM2 converted once from its GGUF; hub models snapshotted once, so jobs
# (and cluster compute nodes) load from a local folder. `source: local` models need no rule.


localrules:
    prepare_model,


rule prepare_model:
    output:
        directory("resources/models/{model}"),
    params:
        # only what the preparation reads: other model settings must not rebuild the model folder
        entry=lambda w: {
            k: v
            for k, v in config["models"][w.model].items()
            if k in ("source", "wheel", "gguf_file", "hub_id", "revision")
        },
    log:
        "logs/models/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
    script:
        "../scripts/prepare_model.py"
