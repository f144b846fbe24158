from editunlearn.pipeline import evaluate_job, job

with job(snakemake):
    evaluate_job(
        model_dir=snakemake.input.model,
        patch_path=snakemake.input.patch,
        split_path=snakemake.input.split,
        split="rephrase",
        spec_params=snakemake.params.spec,
        eval_params=snakemake.params.eval,
        device=snakemake.params.device,
        records_path=snakemake.output.records,
        summary_path=snakemake.output.summary,
        start_patch=snakemake.input.get("start_patch"),
        rephrases_path=snakemake.input.rephrases,
    )
