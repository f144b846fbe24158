from editunlearn.pipeline import job, unlearn_job

with job(snakemake):
    unlearn_job(
        model_dir=snakemake.input.model,
        split_path=snakemake.input.split,
        targets_path=snakemake.input.targets,
        method=snakemake.wildcards.method,
        setting=snakemake.wildcards.setting,
        spec_params=snakemake.params.spec,
        hparams=snakemake.params.hparams,
        device=snakemake.params.device,
        out_path=snakemake.output[0],
        start_patch=snakemake.input.get("start_patch"),
        key_stats=snakemake.input.get("key_stats"),  # editors' key statistics (rules/stats.smk)
    )
