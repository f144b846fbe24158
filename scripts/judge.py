from editunlearn.pipeline import job, judge_job, llm_job

with job(snakemake):
    judge_job(
        llm=llm_job(snakemake, "judge"),
        records_path=snakemake.input.records,
        max_attempts=snakemake.params.max_attempts,
        retry_temperature=snakemake.params.retry_temperature,
        min_parsed=snakemake.params.min_parsed,
        rows_path=snakemake.output.rows,
        summary_path=snakemake.output.summary,
    )
