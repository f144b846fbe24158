from editunlearn.pipeline import job, summarize_setting

with job(snakemake):
    summarize_setting(list(snakemake.input), snakemake.output[0])
