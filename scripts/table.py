from editunlearn.pipeline import job
from editunlearn.tables import make_table

with job(snakemake, model_job=False):
    make_table(snakemake.params.name, snakemake.params.experiment,
               {k: getattr(snakemake.output, k) for k in ("csv", "md", "tex", "html")},
               judges=list(snakemake.input.judges))
