from editunlearn.editing.jobs import corpus_job
from editunlearn.pipeline import job

with job(snakemake) as log:
    corpus_job(
        model_dir=snakemake.input.model,
        spec_params=snakemake.params.spec,
        corpus=snakemake.wildcards.corpus,
        n_samples=int(snakemake.wildcards.n),
        settings=snakemake.params.settings,
        device=snakemake.params.device,
        out_path=snakemake.output[0],
        log=log,
    )
