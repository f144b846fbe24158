from editunlearn.pipeline import job
from editunlearn.tables import base_models_table

with job(snakemake, model_job=False):
    base_models_table(list(snakemake.input), snakemake.output.csv, snakemake.output.md)
