"""A look at the generated data of one setting: the validation and fallback counts of the
rephrases and the self-improved targets, a few rows of each, and the judge's summaries.

    .venv/bin/python benchmarks/generated_samples.py [--dataset factual] [--split n40_s0]
        [--model smollm2-135m] [--rows 10]

Run the generation first, e.g. `snakemake --cores all resources/generated/factual/rephrases.jsonl
resources/targets/factual/n40_s0/smollm2-135m/self-improve.jsonl`. Rephrases shown are those of
the split's forget items.
"""

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _counts(report: dict) -> str:
    keys = ("n", "accepted_first_attempt", "accepted_after_regeneration", "fallback")
    return ", ".join(f"{k} {report[k]}" for k in keys) + f"; rejections {report['rejections']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="factual")
    parser.add_argument("--split", default="n40_s0")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()

    split = json.loads((REPO / f"resources/splits/{args.dataset}/{args.split}.json").read_text())
    forget_ids = {item["id"] for item in split["forget"]}
    generated = REPO / f"resources/generated/{args.dataset}"
    if (generated / "rephrases.jsonl").exists():
        report = json.loads((generated / "rephrases.report.json").read_text())
        rows = [r for r in _read_jsonl(generated / "rephrases.jsonl") if r["id"] in forget_ids]
        print(f"## Rephrases ({args.dataset}, all questions): {_counts(report)}")
        print(f"forget items of {args.split}: {sum(r['fallback'] for r in rows)} of {len(rows)} "
              f"fell back to the template\n")
        for r in rows[: args.rows]:
            print(f"- {r['question']}\n  -> {r['rephrase']}  [{r['source']}, {r['attempts']} attempt(s)]")
        print()
    targets = REPO / f"resources/targets/{args.dataset}/{args.split}/{args.model}"
    if (targets / "self-improve.jsonl").exists():
        report = json.loads((targets / "self-improve.report.json").read_text())
        rows = _read_jsonl(targets / "self-improve.jsonl")
        print(f"## Self-improved targets ({args.model}, {args.split}): {_counts(report)}\n")
        for r in rows[: args.rows]:
            print(f"- {r['question']}\n  -> {r['target']}  [{r['source']}, {r['attempts']} attempt(s)]")
            for rejected in r["rejected"][:1]:
                print(f"     rejected: {rejected['text'][:120]!r} ({'; '.join(rejected['reasons'])})")
        print()
    for path in sorted((REPO / f"results/{args.model}/{args.dataset}").glob(f"*/{args.split}*/judge.json")):
        s = json.loads(path.read_text())
        print(f"## Judge {s['method']}/{s['setting']}: forget quality {s['forget_quality']}, "
              f"entailment {s['entailment']}, trustworthiness {s['trustworthiness']}, "
              f"unparsed {s['unparsed']}, proxies {s['proxy']}")


if __name__ == "__main__":
    main()
