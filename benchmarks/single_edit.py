"""One edit on the embedded model, shown: for each locate-and-edit method, edit the first factual
forget question toward its refusal target and report the teacher-forced target probability and
the greedy answer before and after, plus how many of the first --retain retain answers change.

    .venv/bin/python benchmarks/single_edit.py [--methods rome memit alphaedit] [--retain 20] [--item 0]
        [--threads 1] [--stats resources/stats/smollm2-135m/base/model_samples_n1000.safetensors]

Needs what `snakemake results/smollm2-135m/factual/rome/n40_s0/patch.safetensors` builds (model,
split, idk targets; MEMIT/AlphaEdit also the key statistics, which
`snakemake results/smollm2-135m/factual/memit/n40_s0/patch.safetensors` builds). Uses config.yaml's hyper-parameters for smollm2-135m; writes
benchmarks/out/single_edit.json (one file per --item).
"""

import argparse
import copy
import json

import torch

from _embedded import MODEL, REPO, load_embedded, repo_config

from editunlearn.config import method_hparams
from editunlearn.evaluate import generate, teacher_forced
from editunlearn.io import read_json, read_jsonl, write_json
from editunlearn.methods import UnlearnContext, make_method
from editunlearn.metrics import rouge1_recall
from editunlearn.prompts import answer_ids



def answers(model, tokenizer, formatter, questions):
    return generate(model, tokenizer, [formatter.prompt_ids(q) for q in questions], batch_size=16)


def target_scores(model, tokenizer, formatter, question, target):
    [score] = teacher_forced(model, tokenizer, [(formatter.prompt_ids(question),
                                                 answer_ids(tokenizer, target))])
    return {"prob": score["prob"], "prob_product": score["prob_product"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stats", default=str(REPO / "resources/stats/smollm2-135m/base/model_samples_n1000.safetensors"),
                        help="key statistics file (MEMIT, AlphaEdit)")
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--retain", type=int, default=20)
    parser.add_argument("--item", type=int, default=0, help="which forget question to edit")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = repo_config()
    spec, base, tokenizer, formatter = load_embedded(config)
    split = read_json(REPO / "resources/splits/factual/n40_s0.json")
    targets = {r["id"]: r["target"] for r in read_jsonl(REPO / "resources/targets/factual/n40_s0/idk.jsonl")}
    item = {**split["forget"][args.item]}
    item["target"] = targets[item["id"]]
    retain = split["retain"][: args.retain]
    retain_q = [r["question"] for r in retain]

    before = {"target": target_scores(base, tokenizer, formatter, item["question"], item["target"]),
              "answer": answers(base, tokenizer, formatter, [item["question"]])[0],
              "retain": answers(base, tokenizer, formatter, retain_q)}
    summary = {"model": MODEL, "question": item["question"], "answer": item["answer"],
               "target": item["target"], "before": {k: before[k] for k in ("target", "answer")},
               "methods": {}}
    print(json.dumps(summary), flush=True)
    for method in args.methods:
        model = copy.deepcopy(base)
        hparams = method_hparams(config, method, MODEL)
        ctx = UnlearnContext(model, tokenizer, spec, formatter, [item], retain, hparams,
                             key_stats=args.stats)
        patch = make_method(method, hparams).unlearn(ctx)
        after_retain = answers(model, tokenizer, formatter, retain_q)
        changed = sum(a != b for a, b in zip(before["retain"], after_retain))
        r1 = lambda gens: sum(rouge1_recall(r["answer"], g) for r, g in zip(retain, gens)) / len(retain)  # noqa: E731
        result = {"target": target_scores(model, tokenizer, formatter, item["question"], item["target"]),
                  "answer": answers(model, tokenizer, formatter, [item["question"]])[0],
                  "edit_seconds": patch.info["edits"][0]["seconds"],
                  "retain_answers_changed": f"{changed}/{len(retain)}",
                  "retain_rouge1_before_after": [round(r1(before["retain"]), 3), round(r1(after_retain), 3)]}
        summary["methods"][method] = result
        print(json.dumps({method: result}), flush=True)
    out = REPO / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"single_edit_item{args.item}.json", summary)


if __name__ == "__main__":
    main()
