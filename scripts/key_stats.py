from editunlearn.editing.jobs import key_stats_job
from editunlearn.pipeline import job

with job(snakemake) as log:
    key_stats_job(
        model_dir=snakemake.input.model,
        spec_params=snakemake.params.spec,
        corpus_path=snakemake.input.corpus,
        layers=snakemake.params.layers,
        settings=snakemake.params.settings,
        device=snakemake.params.device,
        out_path=snakemake.output[0],
        log=log,
        start_patch=snakemake.input.get("start_patch"),
    )
