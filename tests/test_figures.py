"""Figures 3-6 from fixed fake summaries: produced, non-empty, column width, reproducible."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from editunlearn import experiments as E
from editunlearn import figures
from fake_results import write_experiment

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _draw(name, config, root, **kwargs):
    desc = E.describe(config, name)
    png, pdf = root / f"{name}.png", root / f"{name}.pdf"
    if name == "fig5":
        figures.fig5(desc, png, pdf, root / "fig5.md", root=str(root))
    else:
        getattr(figures, name)(desc, png, pdf, root=str(root), **kwargs)
    return png, pdf


@pytest.mark.parametrize("name", E.FIGURES)
def test_figure_is_drawn_at_column_width(name, config, tmp_path):
    write_experiment(tmp_path, config, name)
    judges = [c.judge for p in E.experiment_cells(config, name).values() for c in p["cells"]]
    png, pdf = _draw(name, config, tmp_path, **({"judges": judges} if name == "fig6" else {}))
    width, height = _png_size(png)
    assert png.stat().st_size > 20_000 and pdf.read_bytes()[:5] == b"%PDF-"
    # 300 dpi: about one column of a two-column paper (3.4 in), tight bounding box
    assert 2.8 * 300 < width < 3.8 * 300 and height > 2.5 * 300, (width, height)


def test_pdf_is_reproducible(config, tmp_path):
    write_experiment(tmp_path, config, "fig3")
    _, pdf = _draw("fig3", config, tmp_path)
    first = pdf.read_bytes()
    _, pdf = _draw("fig3", config, tmp_path)
    assert pdf.read_bytes() == first


def test_figures_without_rephrase_or_judge_scores(config, tmp_path):
    """Before the LLM-generated data exists: still drawn, the gaps said in the figure."""
    for name in ("fig4", "fig6"):
        write_experiment(tmp_path, config, name, with_rephrase=False, judge=False)
        png, _ = _draw(name, config, tmp_path)
        assert png.stat().st_size > 20_000


def test_case_study_picks_the_best_known_questions(config, tmp_path):
    write_experiment(tmp_path, config, "fig5")
    cases = figures.case_study(E.describe(config, "fig5"), root=str(tmp_path))
    assert len(cases) == config["experiments"]["fig5"]["questions"]
    numbers = [int(question.split()[-1].rstrip("?")) for question, _, _ in cases]
    assert {n % 2 for n in numbers} == {0, 1}, numbers  # one fell back, one did not
    for number, (_, _, answers) in zip(numbers, cases):
        # the fake self-improved targets fell back to idk for the even-numbered questions
        how = ", fell back to idk" if number % 2 == 0 else ""
        assert [label for label, _ in answers] == [
            "Base", "GD", "DPO", "WISE", f"WISE (self-improve{how})", "AlphaEdit",
            f"AlphaEdit (self-improve{how})"]
    _draw("fig5", config, tmp_path)
    md = (tmp_path / "fig5.md").read_text()
    assert cases[0][0] in md and "| AlphaEdit (self-improve" in md


def test_case_study_without_a_reference_row(config, tmp_path):
    config = {**config, "experiments": {**config["experiments"], "reference": None}}
    write_experiment(tmp_path, config, "fig5")
    cases = figures.case_study(E.describe(config, "fig5"), root=str(tmp_path))
    assert [c[0] for c in cases] == ["Who wrote book number 0?", "Who wrote book number 1?"]
    assert cases[0][2][0][0] == "GD"


def test_fig6_shows_the_proxies_where_the_judge_was_unreadable(config, tmp_path):
    write_experiment(tmp_path, config, "fig6")
    desc, png, pdf = E.describe(config, "fig6"), tmp_path / "f.png", tmp_path / "f.pdf"
    judges = [c.judge for c in E.experiment_cells(config, "fig6")["left"]["cells"]]
    assert figures.fig6(desc, png, pdf, root=str(tmp_path), judges=judges) == "judge"
    for path in judges:
        judged = json.loads((tmp_path / path).read_text())
        judged.update(entailment=None, trustworthiness=None, forget_quality=None, reliable=False)
        (tmp_path / path).write_text(json.dumps(judged))
    assert figures.fig6(desc, png, pdf, root=str(tmp_path), judges=judges) == "proxies"
    assert figures.fig6(desc, png, pdf, root=str(tmp_path), judges=[]) is None


def test_fig3_draws_the_starting_model_at_each_size(config, tmp_path, monkeypatch):
    write_experiment(tmp_path, config, "fig3")
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, png, pdf: drawn.append(fig))
    _draw("fig3", config, tmp_path)
    sizes = config["experiments"]["fig3"]["forget_sizes"]["factual"]
    for ax in drawn[0].axes:  # forget and retain panels
        (base,) = [line for line in ax.get_lines() if line.get_label() == "Base (before unlearning)"]
        assert list(base.get_xdata()) == sizes and base.get_linestyle() == "--"
    # the methods' legend is one row (entries in reading order), the starting model's apart
    forget_panel, retain_panel = drawn[0].axes
    methods = [t.get_text() for t in forget_panel.get_legend().get_texts()]
    drawn[0].canvas.draw()  # text positions exist once drawn
    rows = {round(t.get_window_extent().y0) for t in forget_panel.get_legend().get_texts()}
    assert "Base (before unlearning)" not in methods and len(methods) == 4 and len(rows) == 1
    assert [t.get_text() for t in retain_panel.get_legend().get_texts()] == ["Base (before unlearning)"]


def _summaries(root, config, name):
    """(dataset, method, n) -> the job's summary, for the cells of one experiment's main grid."""
    part = next(iter(E.experiment_cells(config, name).values()))
    return {(c.dataset, c.method, c.n): json.loads((root / c.job_dir / "summary.json").read_text())
            for c in part["cells"]}


def test_fig3_and_fig4_draw_the_scores_of_the_summaries(config, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, png, pdf: drawn.append(fig))
    write_experiment(tmp_path, config, "fig3")
    _draw("fig3", config, tmp_path)
    jobs = _summaries(tmp_path, config, "fig3")
    forget_panel, retain_panel = drawn[0].axes
    labels = config["experiments"]["labels"]
    for method in config["experiments"]["fig3"]["methods"]:
        (forget_line,) = [ln for ln in forget_panel.get_lines() if ln.get_label() == labels[method]]
        (retain_line,) = [ln for ln in retain_panel.get_lines() if ln.get_label() == labels[method]]
        sizes = sorted(n for d, m, n in jobs if m == method)
        assert list(forget_line.get_xdata()) == sizes
        assert list(forget_line.get_ydata()) == pytest.approx(  # drawn as 1 - Rouge1: up is better
            [1 - jobs["factual", method, n]["splits"]["forget"]["rouge1_recall"] for n in sizes])
        assert list(retain_line.get_ydata()) == pytest.approx(
            [jobs["factual", method, n]["splits"]["retain"]["rouge1_recall"] for n in sizes])

    write_experiment(tmp_path, config, "fig4")
    _draw("fig4", config, tmp_path)
    bars = [p for p in drawn[1].axes[0].patches if p.get_height() > 0]
    jobs = _summaries(tmp_path, config, "fig4")
    assert sorted(round(b.get_height(), 9) for b in bars) == sorted(
        round(s["combined_score"], 9) for s in jobs.values())
    # hatched exactly where the model is broken (fake ga and kl) or forgot nothing (forget Rouge1
    # not below the starting model's at the same size)
    def forget(s):
        return s["splits"]["forget"]["rouge1_recall"]

    part = next(iter(E.experiment_cells(config, "fig4").values()))
    start = {(c.dataset, c.n): json.loads((tmp_path / c.job_dir / "summary.json").read_text())
             for c in part["references"]}
    grey = {round(s["combined_score"], 9) for (d, m, n), s in jobs.items()
            if s["non_functional"] or forget(s) >= forget(start[d, n])}
    hatched = {round(b.get_height(), 9) for b in bars if b.get_hatch()}
    assert hatched == grey and {"ga", "kl"} <= {m for (d, m, n), s in jobs.items() if s["non_functional"]}


def test_a_method_added_by_the_user_gets_its_own_colour_not_the_starting_models_grey():
    names = ("npo_rt", "my_method", "rmu")
    added = [figures._colour(m) for m in names]
    assert not set(added) & (set(figures.COLOURS.values()) | {"#555555", "#555"})
    # each figure is drawn by its own process: the colour must not depend on Python's hash seed
    code = f"from editunlearn.figures import _colour; print([_colour(m) for m in {names!r}])"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == repr(added)
