# Figures: one wildcard-free rule each (`snakemake results/figures/fig4.png` or `snakemake fig4`),
# PNG and PDF; inputs are only the summaries of the figure's grid (config `experiments.<fig>`).


# fig3, fig4, fig6 (fig5 reads answers, not only scores: its own rule below)
for _figure in ("fig3", "fig4", "fig6"):

    rule:
        name:
            _figure
        localrule: True
        input:
            summaries=experiment_summaries(_figure),
            judges=judge_files(_figure) if _figure == "fig6" else [],
            code=library_code("figures.py", "tables.py", "metrics.py"),
        output:
            png=report(
                f"results/figures/{_figure}.png",
                caption=f"../report/{_figure}.rst",
                category="Figures",
                labels={"figure": _figure},
            ),
            pdf=f"results/figures/{_figure}.pdf",
        params:
            name=_figure,
            experiment=experiment_params(_figure),
        log:
            f"logs/figures/{_figure}.log",
        script:
            "../scripts/figure.py"


rule fig5:
    localrule: True
    input:
        summaries=experiment_summaries("fig5"),
        records=case_study_records("fig5"),
        targets=case_study_targets("fig5"),
        code=library_code("figures.py", "tables.py", "metrics.py"),
    output:
        png=report(
            "results/figures/fig5.png",
            caption="../report/fig5.rst",
            category="Figures",
            labels={"figure": "fig5"},
        ),
        pdf="results/figures/fig5.pdf",
        md="results/figures/fig5.md",
    params:
        name="fig5",
        experiment=experiment_params("fig5"),
    log:
        "logs/figures/fig5.log",
    script:
        "../scripts/figure.py"
