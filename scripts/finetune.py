from editunlearn.pipeline import finetune_job, job

with job(snakemake):
    finetune_job(
        model_dir=snakemake.input.model,
        qa_path=snakemake.input.qa,
        factual_path=snakemake.input.factual,
        dataset=snakemake.wildcards.dataset,
        spec_params=snakemake.params.spec,
        hparams=snakemake.params.hparams,
        device=snakemake.params.device,
        patch_path=snakemake.output.patch,
        report_path=snakemake.log.report,
    )
