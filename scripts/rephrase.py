from editunlearn.pipeline import job, llm_job, rephrase_job

with job(snakemake):
    rephrase_job(
        llm=llm_job(snakemake, "rephrase"),
        qa_path=snakemake.input.qa,
        dataset=snakemake.wildcards.dataset,
        max_attempts=snakemake.params.max_attempts,
        retry_temperature=snakemake.params.retry_temperature,
        rows_path=snakemake.output.rows,
        report_path=snakemake.output.report,
    )
