# Tables: one wildcard-free rule each, so each is a target of its own (`snakemake table1`).
# A table's inputs are only the summaries of its grid (config `experiments.<table>`), so it
# reruns when one of them changes and never because another table's jobs did.


localrules:
    table_base_models,
    paper_comparison,


rule table_base_models:
    input:
        base_summaries(),
    output:
        csv="results/tables/base_models.csv",
        md="results/tables/base_models.md",
    log:
        "logs/tables/base_models.log",
    script:
        "../scripts/table_base_models.py"


# table1 ... table7: the paper's Tables 1-7 (layouts in editunlearn/tables.py)
for _table in experiments_grid.TABLES:

    rule:
        name:
            _table
        localrule: True
        input:
            summaries=experiment_summaries(_table),
            judges=judge_files(_table) if _table == "table6" else [],
            code=library_code("tables.py", "metrics.py"),
        output:
            csv=report(
                f"results/tables/{_table}.csv",
                caption=f"../report/{_table}.rst",
                category="Tables",
                labels={"table": _table, "format": "CSV (full precision)"},
            ),
            md=f"results/tables/{_table}.md",
            tex=f"results/tables/{_table}.tex",
            html=report(
                f"results/tables/{_table}.html",
                caption=f"../report/{_table}.rst",
                category="Tables",
                labels={"table": _table, "format": "table"},
            ),
        params:
            name=_table,
            experiment=experiment_params(_table),
        log:
            f"logs/tables/{_table}.log",
        script:
            "../scripts/table.py"


rule paper_comparison:
    input:
        unpack(lambda w: comparison_tables()),
        paper=[str(p) for p in PAPER_FILES],
        code=library_code("paper.py"),
    output:
        values="results/paper/values.csv",
        kendall="results/paper/kendall.csv",
        observations=report(
            "results/paper/observations.csv",
            caption="../report/paper_comparison.rst",
            category="Paper comparison",
            labels={"content": "observations 1-6"},
        ),
        md=report(
            "results/paper/comparison.md",
            caption="../report/paper_comparison.rst",
            category="Paper comparison",
            labels={"content": "values and Kendall tau"},
        ),
    params:
        tables=comparison_tables(),
    log:
        "logs/tables/paper_comparison.log",
    script:
        "../scripts/paper_comparison.py"
