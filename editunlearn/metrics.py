"""Metrics of paper appendix B.3, made precise in DESIGN §3.

ROUGE-1 recall of the greedy generation against the answer; and, teacher-forced on the answer
tokens after the prompt (one forward pass): probability (product and length-normalised), mean
reciprocal rank of each answer token, and the fraction of answer tokens ranked within the top k.
PISTOL computes MRR and hit rate from generation-step scores, which depends on the batch; the
teacher-forced form here does not.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_recall(answer: str, generation: str) -> float:
    return float(_scorer().score(target=answer, prediction=generation)["rouge1"].recall)


def token_metrics(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 100) -> dict:
    """Metrics of one answer from the logits that predict its tokens.

    ``logits``: (T, V), row i is the distribution the model gives for answer token i;
    ``targets``: (T,) the answer token ids.
    """
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target_logprob = logprobs.gather(1, targets[:, None]).squeeze(1)
    target_logit = logits.gather(1, targets[:, None])
    # rank 1 = the target is the arg max; ties count in the target's favour
    ranks = (logits > target_logit).sum(dim=1) + 1
    total_logprob = float(target_logprob.sum())
    n = len(targets)
    return {
        "prob": math.exp(total_logprob / n),
        "prob_product": math.exp(total_logprob),
        "nll": -total_logprob / n,
        "mrr": float((1.0 / ranks.float()).mean()),
        "hit_rate": float((ranks <= top_k).float().mean()),
        "n_answer_tokens": n,
    }


def summarize(records: list[dict]) -> dict:
    """Means over items of every numeric metric."""
    keys = ["rouge1_recall", "prob", "prob_product", "nll", "mrr", "hit_rate"]
    out = {"n": len(records)}
    for key in keys:
        values = [r[key] for r in records if key in r]
        out[key] = sum(values) / len(values) if values else None
    return out


def combined_score(forget_rouge1: float, retain_rouge1: float) -> float:
    """Paper Fig. 4 and 6: 1 - Rouge1@Forget + Rouge1@Retain (higher is better, max 2)."""
    return 1.0 - forget_rouge1 + retain_rouge1


NON_FUNCTIONAL_ROUGE1 = 0.05  # below this Rouge1 on forget and retain a model answers nothing


def is_non_functional(forget_rouge1: float, retain_rouge1: float,
                      threshold: float = NON_FUNCTIONAL_ROUGE1) -> bool:
    """The paper greys out models that no longer answer anything: near-zero Rouge1 on retain
    (and so on forget too)."""
    return retain_rouge1 < threshold and forget_rouge1 < threshold
