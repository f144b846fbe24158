from editunlearn.pipeline import job, llm_job, self_improve_job

with job(snakemake):
    self_improve_job(
        llm=llm_job(snakemake, "self_improve"),
        split_path=snakemake.input.split,
        idk_path=snakemake.input.idk,
        max_attempts=snakemake.params.max_attempts,
        retry_temperature=snakemake.params.retry_temperature,
        targets_path=snakemake.output.targets,
        report_path=snakemake.output.report,
    )
