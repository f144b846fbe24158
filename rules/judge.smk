# Alignment judging (paper Fig. 6 left, appendix D; editunlearn/judge.py): an LLM judge scores each
# job's answers on the forget split -- forget quality, semantic entailment, trustworthiness -- next
# to deterministic proxies (refusal, entity mention, answer leak). Which LLM judges: `llm:` with
# `judge.llm` on top; which datasets: `judge.datasets`.


if llm_backend("judge") == "openai":

    localrules:
        judge,


rule judge:
    input:
        unpack(llm_inputs("judge")),
        records=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/eval/forget.jsonl",
        code=JUDGE_CODE,
    output:
        summary=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/judge.json",
        rows=f"{RESULTS}/{{model}}/{{dataset}}/{{method}}/{{setting}}/judge.jsonl",
    params:
        **llm_params("judge"),
        max_attempts=config["judge"]["max_attempts"],
        retry_temperature=config["judge"]["retry_temperature"],
        min_parsed=config["judge"].get("min_parsed", 0.5),
        device=config["device"],
    threads: llm_threads("judge")
    resources:
        **llm_resources("judge"),
    log:
        "logs/{model}/{dataset}/{method}/{setting}/judge.log",
    benchmark:
        "results/benchmarks/judge/{model}/{dataset}/{method}/{setting}.tsv"
    script:
        "../scripts/judge.py"
