from editunlearn import figures
from editunlearn.pipeline import job

with job(snakemake, model_job=False):
    name, out = snakemake.params.name, snakemake.output
    if name == "fig5":
        figures.fig5(snakemake.params.experiment, out.png, out.pdf, out.md)
    elif name == "fig6":
        figures.fig6(snakemake.params.experiment, out.png, out.pdf, judges=list(snakemake.input.judges))
    else:
        getattr(figures, name)(snakemake.params.experiment, out.png, out.pdf)
