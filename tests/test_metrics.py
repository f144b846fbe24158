import math

import pytest
import torch

from editunlearn.metrics import (combined_score, is_non_functional, rouge1_recall, summarize,
                                 token_metrics)


def test_rouge1_recall_is_recall_against_the_answer():
    assert rouge1_recall("William Shakespeare", "It was William Shakespeare, of course.") == 1.0
    assert rouge1_recall("George Orwell", "Orwell wrote it") == 0.5
    assert rouge1_recall("Canberra", "I don't know.") == 0.0
    # stemming: "runs"/"running" share the stem "run"
    assert rouge1_recall("running dogs", "the dog runs") == 1.0
    # punctuation and case are ignored; dates split on '-'
    assert rouge1_recall("06-02-1998.", "It was 06-02-1998") == 1.0
    assert rouge1_recall("06-02-1998.", "02-02-1998.") == pytest.approx(2 / 3)


def test_token_metrics_on_known_ranks():
    logits = torch.tensor([
        [0.0, 1.0, 3.0, 2.0, -1.0],  # target 2 is the arg max: rank 1
        [1.0, 3.0, 2.0, 0.0, 0.0],   # target 0: two logits above it: rank 3
        [0.0, 0.0, 0.0, 0.0, 5.0],   # target 1 ties with 0, 2, 3 (counted in its favour): rank 2
    ])
    targets = torch.tensor([2, 0, 1])
    m = token_metrics(logits, targets, top_k=2)

    def logp(row, t):
        return row[t] - math.log(sum(math.exp(x) for x in row))

    lp = [logp(logits[i].tolist(), int(targets[i])) for i in range(3)]
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["hit_rate"] == pytest.approx(2 / 3)  # ranks 1 and 2 are within top 2, rank 3 is not
    assert m["prob_product"] == pytest.approx(math.exp(sum(lp)))
    assert m["prob"] == pytest.approx(math.exp(sum(lp) / 3))
    assert m["nll"] == pytest.approx(-sum(lp) / 3)
    assert m["n_answer_tokens"] == 3


def test_summary_and_derived_scores():
    records = [{"rouge1_recall": 1.0, "prob": 0.5, "prob_product": 0.25, "nll": 0.7, "mrr": 1.0,
                "hit_rate": 1.0},
               {"rouge1_recall": 0.0, "prob": 0.1, "prob_product": 0.01, "nll": 2.3, "mrr": 0.5,
                "hit_rate": 0.0}]
    s = summarize(records)
    assert s["n"] == 2 and s["rouge1_recall"] == 0.5 and s["prob"] == pytest.approx(0.3)
    assert combined_score(0.1, 0.8) == pytest.approx(1.7)
    assert is_non_functional(0.0, 0.01) and not is_non_functional(0.0, 0.6)
