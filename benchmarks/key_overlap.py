"""How much a ROME edit keyed on one question spills onto other questions, per key-token choice.

    .venv/bin/python benchmarks/key_overlap.py [--layer 5] [--n 60] [--stats FILE]

A rank-one edit Delta = r u^T / (u . k) changes the layer's output for another key k' by
r (u . k') / (u . k): the "spill" of the edit onto k', relative to its effect on its own key k
(1 = the other question gets the full edit). For the first --n factual questions (the n40_s0
split's forget then retain items) this prints the mean / median / 90th percentile spill over all
ordered pairs of different questions, for each `subject` / `fact_token` choice, with u = k
(mom2_adjustment false) and, given --stats (a key-statistics file of the model), u = C^-1 k.
Forward passes only: about a minute on 2 cores. Needs resources/models/smollm2-135m and the split.
"""

import argparse

import torch

from _embedded import REPO, load_embedded, repo_config

from editunlearn.editing.keys import request_keys
from editunlearn.editing.requests import build_requests, tokenize_context
from editunlearn.editing.stats import KeyStats
from editunlearn.io import read_json

CHOICES = [("question", "subject_last"), ("content", "subject_last"), ("entity", "subject_last"),
           ("question", "prompt_last")]


def spill(keys: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(u_i . k_j) / (u_i . k_i) for i != j."""
    ratio = (directions.T @ keys) / (directions * keys).sum(0)[:, None]
    return ratio[~torch.eye(len(ratio), dtype=torch.bool)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--stats", help="key-statistics file (resources/stats/...) for u = C^-1 k")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = repo_config()
    spec, model, tokenizer, formatter = load_embedded(config)
    split = read_json(REPO / "resources/splits/factual/n40_s0.json")
    items = [{**it, "target": "-"} for it in (split["forget"] + split["retain"])[: args.n]]
    down = model.get_submodule(spec.module_name("mlp_down", args.layer))
    cov = KeyStats.load(args.stats, [args.layer]).layer(args.layer).double() if args.stats else None
    print(f"layer {args.layer}, {len(items)} questions: spill of an edit onto another question's key")
    for subject, fact_token in CHOICES:
        requests = build_requests(items, subject)
        keys = request_keys(model, tokenizer, down,
                            [[tokenize_context(formatter, r, fact_token)] for r in requests]).double()
        rows = [("u = k", spill(keys, keys))]
        if cov is not None:
            rows.append(("u = C^-1 k", spill(keys, torch.linalg.solve(cov, keys))))
        for label, values in rows:
            print(f"  subject {subject:8s} fact_token {fact_token:12s} {label:10s} mean {values.mean():.3f}"
                  f"  median {values.median():.3f}  p90 {values.quantile(0.9):.3f}")


if __name__ == "__main__":
    main()
