"""The cost projection behind the README's per-target hours (benchmarks/target_cost.py)."""
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import target_cost  # noqa: E402


def job(rule, cpu, **wildcards):
    return {"rule": rule, "cpu": cpu, "benchmark": f"results/benchmarks/{rule}.tsv",
            "wildcards": ", ".join(f"{k}={v}" for k, v in wildcards.items())}


def test_unmeasured_forget_evaluations_scale_per_forget_item_and_never_pool_with_other_splits():
    measured = [
        job("evaluate_split", 400.0, dataset="factual", method="ga", setting="n40_s0", split="forget"),
        job("evaluate_split", 30.0, dataset="factual", method="ga", setting="n40_s0", split="retain"),
        job("evaluate_split", 50.0, dataset="factual", method="ga", setting="n40_s0", split="locality"),
    ]
    planned = [
        # same method: 10 s per forget item, times 80 items
        job("evaluate_split", None, dataset="factual", method="ga", setting="n80_s0", split="forget"),
        # no measured dpo job: falls back to the rule, dataset and split, still per item
        job("evaluate_split", None, dataset="factual", method="dpo", setting="n20_s0", split="forget"),
        # retain costs per job whatever N is
        job("evaluate_split", None, dataset="factual", method="ga", setting="n80_s0", split="retain"),
        # nothing measured for PISTOL: unknown, not borrowed from another dataset
        job("unlearn", None, dataset="pistol", method="ga", setting="n20_s0"),
        {"rule": "make_split", "cpu": 0.0},
    ]
    cost = target_cost.estimate({"done": measured, "next": planned})
    assert cost["done"]["measured"] == pytest.approx(480.0)
    assert cost["done"]["estimated"] == 0.0
    assert cost["next"]["estimated"] == pytest.approx(10 * 80 + 10 * 20 + 30)
    assert cost["next"]["unknown"] == ["unlearn"]
    assert cost["next"]["per_rule"]["evaluate_split"] == pytest.approx(1030.0)


def test_unlearning_cost_is_kept_per_forget_item():
    jobs = [job("unlearn", 200.0, dataset="factual", method="gd", setting="n20_s0"),
            job("unlearn", None, dataset="factual", method="gd", setting="n100_s1")]
    assert target_cost.estimate({"t": jobs})["t"]["estimated"] == pytest.approx(1000.0)
