from editunlearn.paper import make_comparison
from editunlearn.pipeline import job

with job(snakemake, model_job=False):
    make_comparison(dict(snakemake.params.tables),
                    {k: getattr(snakemake.output, k) for k in ("values", "kendall", "observations", "md")},
                    paper_paths=list(snakemake.input.paper))
