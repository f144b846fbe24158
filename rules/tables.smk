# Tables and figures: one wildcard-free rule each, so each is a target of its own.


localrules:
    table_base_models,


rule table_base_models:
    input:
        base_summaries(),
    output:
        csv="results/tables/base_models.csv",
        md="results/tables/base_models.md",
    conda:
        CONDA_ENV
    log:
        "logs/tables/base_models.log",
    script:
        "../scripts/table_base_models.py"
