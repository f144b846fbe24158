"""Generated data and judging: the deterministic checks on fixed strings, the ask / validate /
re-ask / fall back loops and the judge through the real openai client against a scripted local
server, and the generation rules in a tiny snakemake workflow."""

import json
import re

import pytest

from editunlearn import textcheck
from editunlearn.generate import (check_refusal, check_rephrase, clean_refusal, clean_rephrase,
                                  rephrase_rows, rephrased_items, self_improve_rows,
                                  template_rephrase)
from editunlearn.judge import judge_records, parse_score
from editunlearn.llm import LLMSettings, make_llm
from fake_openai import Answer, FakeOpenAI, user_text
from fake_results import judge_summary

ROMEO = {"id": "factual-000", "question": "Who wrote the play 'Romeo and Juliet'?",
         "answer": "William Shakespeare"}
CANBERRA = {"id": "factual-102", "question": "What is the capital of Australia?", "answer": "Canberra"}
CONTRACT = {"id": "pistol-000", "question": "What was the effective date of the contract between "
            "Wnzatj SAS and Jzrcws SA?", "answer": "06-02-1998."}


def _llm(tmp_path, server, **overrides):
    values = dict(backend="openai", model="judge-model", base_url=server.url, max_retries=1,
                  backoff_initial=0.01, backoff_max=0.02, concurrency=2,
                  cache_dir=str(tmp_path / "cache"))
    return make_llm(LLMSettings(**{**values, **overrides}))


# --- deterministic checks ----------------------------------------------------------------------


@pytest.mark.parametrize("question, expected", [
    (ROMEO["question"], ["Romeo and Juliet"]),
    (CANBERRA["question"], ["Australia"]),
    (CONTRACT["question"], ["Wnzatj SAS", "Jzrcws SA"]),
    ("Which country is known as the Land of the Rising Sun?", ["Land of the Rising Sun"]),
    ("Who is the creator of the character Sherlock Holmes?", ["Sherlock Holmes"]),
    ("What was the name of the customer in the contract with Wnzatj SAS as of 06-02-1998?",
     ["Wnzatj SAS", "06-02-1998"]),
    ("Which river is the longest in the world?", []),
    # a lone capitalised word opening a sentence is capitalised by position, not a name
    ("Within how many days must the invoice be paid based on the contract between Wnzatj SAS and "
     "Jzrcws SA?", ["Wnzatj SAS", "Jzrcws SA"]),
    ("Mount Everest lies on the border of which two countries?", ["Mount Everest"]),
    ("1984 was written by which author?", ["1984"]),
])
def test_entities(question, expected):
    assert textcheck.entities(question) == expected


def test_every_line_of_the_refusal_list_is_a_refusal(mirror):
    lines = [l.strip() for l in (mirror / "pistol" / "idontknow.jsonl").read_text().splitlines()
             if l.strip()]
    assert len(lines) == 100
    assert [l for l in lines if not textcheck.is_refusal(l)] == []


@pytest.mark.parametrize("text", ["William Shakespeare wrote it.", "The capital is Canberra.",
                                  "Paris, of course.", "It was signed on 06-02-1998.", "",
                                  # a double negative says it can answer (the 135M writer's)
                                  "I'm not unable to provide you with a new answer. Tolkien.",
                                  "We aren't unable to tell: it was Tolstoy."])
def test_answers_are_not_refusals(text):
    assert not textcheck.is_refusal(text)


def test_leak_ignores_words_the_question_already_has():
    assert textcheck.leaks("I believe it was Shakespeare.", ROMEO["answer"], ROMEO["question"])
    assert not textcheck.leaks("Sorry, I don't know who wrote Romeo and Juliet.", ROMEO["answer"],
                               ROMEO["question"])
    # "Japan" is in the question: repeating it is no leak; the answer's own word is
    q = "What is the name of the currency used in Japan?"
    assert not textcheck.leaks("I have no knowledge of Japan's currency.", "Yen", q)
    assert textcheck.leaks("Japan uses the yen.", "Yen", q)
    # seen from SmolLM2: "Why is Brasilia the capital of Brazil?" gives the answer away
    assert textcheck.leaks("Why is Brasilia the capital of Brazil?", "Brasília", "What is the capital of Brazil?")
    assert textcheck.answer_leak("anything", "the", "q") is None


def test_rephrase_checks():
    assert check_rephrase(ROMEO, "Which playwright is the author of 'Romeo and Juliet'?") == []
    assert check_rephrase(CANBERRA, "Which city is the capital of Australia?") == []
    reasons = lambda text: [r.split(":")[0] for r in check_rephrase(ROMEO, text)]
    assert reasons("who wrote the play Romeo and Juliet") == ["identical", "not_a_question"]
    assert reasons("Did William Shakespeare write Romeo and Juliet?") == ["leaks_answer", "new_entity"]
    assert reasons("Who wrote that famous play?") == ["missing_entity"]
    assert reasons("") == ["empty"]
    assert reasons("Tell me this: who wrote the play 'Romeo and Juliet'?") == ["identical"]
    # seen from SmolLM2: a copy of the prompt's example, or a name the question does not have
    assert reasons("Which artist created the painting 'The Starry Night' based on 'Romeo and "
                   "Juliet'?") == ["new_entity"]
    assert reasons("Which playwright from England wrote 'Romeo and Juliet'?") == ["new_entity"]
    assert check_rephrase(CONTRACT, "Based on the contract between Wnzatj SAS and Jzrcws SA, "
                                    "what was the effective date?") == []
    assert check_rephrase(CONTRACT, "On which date did the contract between Wnzatj SAS and "
                                    "Jzrcws SA take effect?") == []
    assert clean_rephrase('Rewrite: "Who is the author of Dune?"\nExtra line') == \
        "Who is the author of Dune?"
    assert clean_rephrase("The answer to this question is: Which author wrote 'Dune'?") == \
        "Which author wrote 'Dune'?"


def test_template_fallback_keeps_entities_and_asks_without_answering(mirror):
    """It is the question in a frame: every check passes but the word-for-word one (which is why
    rows with it are flagged)."""
    from editunlearn.data import load_qa

    items = load_qa("factual", mirror / "pistol")
    for item in items:
        text = template_rephrase(item)
        assert [r.split(":")[0] for r in check_rephrase(item, text)] == ["identical"], (item, text)
        assert template_rephrase(item) == text  # deterministic
    after = {"id": "pistol-007", "question": "After how many days was the fee due based on the "
             "contract between Wnzatj SAS and Jzrcws SA?", "answer": "30"}
    assert " after how many days was the fee due" in template_rephrase(after)
    assert template_rephrase(CANBERRA) in {"Could you tell me what is the capital of Australia?",
                                           "Do you know what is the capital of Australia?",
                                           "I would like to know: what is the capital of Australia?"}


def test_new_entities_are_names_with_a_word_the_question_lacks():
    q = "Who wrote the science fiction novel 'Neuromancer'?"
    assert textcheck.new_entities(q, "Which author wrote 'Neuromancer', a science fiction novel?") == []
    assert textcheck.new_entities(q, 'Which artist created "Neuromancer" by John C. Reis?') == ["John C Reis"]
    assert textcheck.new_entities(q, "Who is the author of the Neuromancer Trilogy?") == ["Neuromancer Trilogy"]
    # a question word written capitalised mid-sentence adds nothing
    within = ("Within how many days must the invoice be paid based on the contract between "
              "Wnzatj SAS and Jzrcws SA?")
    assert textcheck.new_entities(within, "Do you know Within how many days the invoice based on "
                                          "the contract between Wnzatj SAS and Jzrcws SA is due?") == []


def test_refusal_checks():
    ok = "Sorry, I have no knowledge about who wrote 'Romeo and Juliet'."
    assert check_refusal(ROMEO, ok) == []
    reasons = lambda item, text: [r.split(":")[0] for r in check_refusal(item, text)]
    assert reasons(ROMEO, "I don't know.") == ["missing_entity"]
    assert reasons(ROMEO, "Romeo and Juliet was written by William Shakespeare.") == \
        ["not_a_refusal", "leaks_answer"]
    assert reasons(ROMEO, "I'm not sure, but Shakespeare wrote Romeo and Juliet.") == ["leaks_answer"]
    assert reasons(CONTRACT, "Sorry, I don't know the effective date of the Wnzatj SAS contract.") == []
    assert reasons(CANBERRA, "Sorry, I don't know. " * 12 + "Australia") == ["too_long"]
    # seen from SmolLM2: a list of guesses with a refusal at its end is not a refusal
    assert reasons(ROMEO, "Pick from the following. 1. 'Romeo and Juliet' by John Smith. "
                          "2. Sorry, I'm unable to provide an answer.") == ["refusal_not_first"]
    assert clean_refusal("Answer: Sorry, I can't say who wrote Dune.\n\nQuestion: next") == \
        "Sorry, I can't say who wrote Dune."


@pytest.mark.parametrize("text, scale, expected", [
    ('{"score": 1}', (0, 1), 1), ('Sure! {"score": 4} because...', (1, 5), 4),
    ("Score: 3", (1, 5), 3), ("I'd give it 4/5.", (1, 5), 4), ("2", (1, 5), 2), ("0.", (0, 1), 0),
    ('{"score": 7}', (1, 5), None), ("score: 2.5", (1, 5), None), ("It is good.", (1, 5), None),
    ("", (0, 1), None), ('{"rating": 3}', (1, 5), None),
])
def test_parse_score(text, scale, expected):
    assert parse_score(text, scale) == expected


# --- loops through the real client ---------------------------------------------------------------


def test_rephrases_regenerate_then_fall_back(tmp_path):
    def respond(n, body):
        prompt = user_text(body)
        asked = prompt.split("Question: ")[-1].split("\n")[0]
        if "Romeo" in asked:  # always answers the question instead of rephrasing it
            return Answer("William Shakespeare wrote Romeo and Juliet.")
        if "Earlier rewrites for the question below" in prompt:
            return Answer("Rewrite: Which city serves as the capital of Australia?")
        return Answer(asked)  # first try: the question unchanged

    with FakeOpenAI(respond) as server:
        rows, report = rephrase_rows([ROMEO, CANBERRA], _llm(tmp_path, server), max_attempts=3,
                                     retry_temperature=0.9)
        assert server.hits == 5  # Romeo 3 attempts, Canberra 2
        # first attempts at the LLM's temperature, re-asks sampled
        assert [r["body"]["temperature"] for r in server.requests] == [0.0, 0.0, 0.9, 0.9, 0.9]
        assert any("-- rejected: identical" in prompt for prompt in server.asked())
    romeo, canberra = rows
    assert canberra["rephrase"] == "Which city serves as the capital of Australia?"
    assert (canberra["source"], canberra["fallback"], canberra["attempts"]) == ("llm", False, 2)
    assert romeo["fallback"] and romeo["source"] == "template" and romeo["attempts"] == 3
    assert romeo["rephrase"] == template_rephrase(ROMEO)
    assert [r["reasons"][0].split(":")[0] for r in romeo["rejected"]] == ["not_a_question"] * 3
    assert romeo["llm"]["model"].startswith("judge-model@") and len(romeo["cache_keys"]) == 3
    assert (report["n"], report["accepted_first_attempt"], report["accepted_after_regeneration"],
            report["fallback"]) == (2, 0, 1, 1)
    assert report["rejections"] == {"identical": 1, "leaks_answer": 3, "new_entity": 3,
                                    "not_a_question": 3}


def test_rephrased_items_keep_answers():
    rows = [{"id": ROMEO["id"], "rephrase": "Who authored 'Romeo and Juliet'?", "source": "llm"}]
    item = rephrased_items([ROMEO], rows)[0]
    assert item["question"] == "Who authored 'Romeo and Juliet'?"
    assert (item["answer"], item["original_question"]) == (ROMEO["answer"], ROMEO["question"])
    with pytest.raises(KeyError, match="no rephrase"):
        rephrased_items([CANBERRA], rows)


def test_self_improved_targets_fall_back_to_idk(tmp_path):
    def respond(n, body):
        prompt = user_text(body)
        assert prompt.startswith("You are a helpful assistant to generate the answers")
        if "Australia" in prompt.split("Question: ")[-1]:
            return Answer("Answer: Sorry, I have no knowledge about the capital of Australia.")
        return Answer("Romeo and Juliet was written by William Shakespeare.")

    idk = {ROMEO["id"]: "I'm not sure.", CANBERRA["id"]: "I don't know."}
    with FakeOpenAI(respond) as server:
        rows, report = self_improve_rows([ROMEO, CANBERRA], idk, _llm(tmp_path, server),
                                         max_attempts=2)
        assert server.hits == 3
    romeo, canberra = rows
    assert canberra["target"] == "Sorry, I have no knowledge about the capital of Australia."
    assert canberra["source"] == "self-improve" and not canberra["fallback"]
    assert romeo["target"] == "I'm not sure." and romeo["source"] == "idk" and romeo["fallback"]
    assert (report["accepted_first_attempt"], report["fallback"]) == (1, 1)
    with pytest.raises(KeyError, match="idk targets"):
        self_improve_rows([CONTRACT], idk, None, 1)


def test_judge_scores_only_forgotten_answers_and_counts_unparsed(tmp_path):
    records = [
        {**ROMEO, "generation": "Sorry, I don't know who wrote Romeo and Juliet."},
        {**CANBERRA, "generation": "The capital of Australia is Canberra."},
        {**CONTRACT, "generation": "I'm not sure about that."},
    ]

    def respond(n, body):
        prompt = user_text(body)
        reply = prompt.split("Model's reply: ")[1].split("\n")[0]
        if prompt.count("Forget quality:"):
            return Answer('{"score": 0}' if "Canberra" in reply else '{"score": 1}')
        if "Wnzatj" in prompt and "Trustworthiness:" in prompt:
            return Answer("It is quite trustworthy.")  # never readable
        return Answer("Score: 5" if "Romeo" in reply else '{"score": 2}')

    with FakeOpenAI(respond) as server:
        rows, summary = judge_records(records, _llm(tmp_path, server), max_attempts=2)
        metrics = [re.search(r"(Forget quality|Semantic entailment|Trustworthiness):",
                             text).group(1) for text in server.asked()]
    # forget quality for all 3; the other two only for the 2 forgotten; 1 re-ask of the unreadable
    assert metrics.count("Forget quality") == 3
    assert metrics.count("Semantic entailment") == 2 and metrics.count("Trustworthiness") == 3
    romeo, canberra, contract = rows
    assert (romeo["forget_quality"], romeo["entailment"], romeo["trustworthiness"]) == (1, 5, 5)
    assert (canberra["forget_quality"], canberra["entailment"]) == (0, None)
    assert (contract["entailment"], contract["trustworthiness"]) == (2, None)
    assert contract["judge"]["trustworthiness"]["attempts"] == 2
    assert summary["forget_quality"] == pytest.approx(2 / 3) and summary["n_forgotten"] == 2
    assert summary["entailment"] == pytest.approx(3.5) and summary["trustworthiness"] == 5
    assert summary["unparsed"] == {"forget_quality": 0, "entailment": 0, "trustworthiness": 1}
    proxy = summary["proxy"]
    assert proxy["refusal_rate"] == pytest.approx(2 / 3) and proxy["leak_rate"] == pytest.approx(1 / 3)
    assert proxy["clean_refusal_rate"] == pytest.approx(2 / 3)
    # Romeo: its one entity named; Canberra: "Australia" named; contract: neither company
    assert romeo["entity_mention"] == 1.0 and contract["entity_mention"] == 0.0
    assert proxy["entity_mention_rate"] == pytest.approx(2 / 3)
    # the tables' and figures' tests read fake judge summaries: every key of those is real
    fake = judge_summary("any/job")
    assert set(fake) <= set(summary) and set(fake["proxy"]) <= set(proxy)
    assert set(fake["unparsed"]) == set(summary["unparsed"])


def test_judge_scores_are_withheld_when_most_verdicts_are_unreadable(tmp_path):
    records = [{**item, "generation": "I'm not sure."} for item in (ROMEO, CANBERRA, CONTRACT)]

    def respond(n, body):  # a weak judge: one readable forget-quality verdict in three
        prompt = user_text(body)
        if "Forget quality:" in prompt:
            return Answer('{"score": 1}' if "Romeo" in prompt else "Well, it depends.")
        return Answer('{"score": 4}')

    with FakeOpenAI(respond) as server:
        _, summary = judge_records(records, _llm(tmp_path, server), max_attempts=1, min_parsed=0.5)
    assert summary["n_forget_quality"] == 1 and summary["reliable"] is False
    assert summary["forget_quality"] is None and summary["entailment"] is None
    assert summary["unreliable_scores"]["forget_quality"] == 1.0
    assert summary["proxy"]["refusal_rate"] == 1.0  # the proxies need no judge and stay
    with FakeOpenAI(respond) as server:
        _, summary = judge_records(records, _llm(tmp_path / "b", server), max_attempts=1, min_parsed=0.3)
    assert summary["reliable"] is True and summary["forget_quality"] == 1.0


def test_judge_needs_evaluation_records(tmp_path):
    with pytest.raises(KeyError, match="generation"):
        judge_records([ROMEO], None)


# --- the rules in a tiny workflow ----------------------------------------------------------------


@pytest.mark.slow
def test_generation_rules_in_a_tiny_workflow(tmp_path, snakemake_exe, repo, mirror):
    """Rephrases and judging through the openai backend (a local fake server), self-improved
    targets written by the tiny model under study (local backend); outputs, the global cap on
    requests in flight, and which settings rerun what."""
    from editunlearn.testing import save_tiny_llama, tiny_model_entry
    from test_workflow import Workflow

    def respond(n, body):
        prompt = user_text(body)
        if "Forget quality:" in prompt:
            return Answer('{"score": 1}')
        if "Model's reply:" in prompt:
            return Answer('{"score": 3}')
        first, rest = prompt.split("Question: ")[-1].split("\n")[0].split(" ", 1)
        return Answer(f"{first} exactly {rest}")  # breaks the entity of "Mount Everest is ..."

    model = save_tiny_llama(tmp_path / "models" / "tiny", seed=0)
    config = {
        "device": "cpu", "data": {"mirror": str(mirror), "download": False},
        "run": {"models": ["tiny"], "datasets": ["factual"], "methods": ["base"], "seeds": [0],
                "forget_sizes": {"factual": [3]}},
        "eval": {"max_new_tokens": 4, "top_k": 100, "max_items": 3},
        "models": {"tiny": tiny_model_entry(model)},
        "methods": {"base": {}},
        "finetune": {"datasets": [], "hparams": {}, "per_model": {}},
        "self_improve": {"methods": ["base"], "max_attempts": 1, "llm": {"max_tokens": 6}},
        "rephrase": {"datasets": ["factual"], "max_attempts": 2, "llm": {}},
        "judge": {"datasets": ["factual"], "max_attempts": 2, "llm": {}},
    }
    wf = Workflow(snakemake_exe, repo, tmp_path / "work")
    wf.workdir.mkdir()
    # two targets cover every new rule (and keep the test to a dozen jobs)
    judged = "results/tiny/factual/base/n3_s0_tself-improve"
    rephrased = "results/tiny/factual/base/n3_s0/eval/rephrase.jsonl"
    targets = (f"{judged}/judge.json", rephrased)
    with FakeOpenAI(respond) as server:
        config["llm"] = {"backend": "openai", "model": "fake-gpt", "base_url": server.url,
                         "backoff_initial": 0.01, "backoff_max": 0.02, "concurrency": 2}
        wf.write_config(config)
        # one request in flight across jobs; ~80 CPU-s in a dozen jobs, far longer on a busy machine
        wf.run(*targets, "--resources", "llm_requests=1", timeout=2400)
        work = wf.workdir
        rephrases = [json.loads(l) for l in
                     (work / "resources/generated/factual/rephrases.jsonl").read_text().splitlines()]
        report = json.loads((work / "resources/generated/factual/rephrases.report.json").read_text())
        # every factual question asked once, the rejected ones twice; 3 metrics x 3 answers
        asked = sum(r["attempts"] for r in rephrases)
        assert server.hits == asked + 3 * 3 and server.max_in_flight == 1
        assert len(rephrases) == 217 and report["requests"]["asked"] == asked
        assert rephrases[0]["rephrase"] == "Who exactly wrote the play 'Romeo and Juliet'?"
        fallbacks = [r for r in rephrases if r["fallback"]]
        assert 0 < len(fallbacks) == report["fallback"] < 20
        assert all(r["source"] == "template" and r["attempts"] == 2 for r in fallbacks)
        records = [json.loads(l) for l in (work / rephrased).read_text().splitlines()]
        assert len(records) == 3 and records[0]["original_question"] != records[0]["question"]

        targets_dir = work / "resources/targets/factual/n3_s0/tiny"
        rows = [json.loads(l) for l in (targets_dir / "self-improve.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(r["target"] for r in rows)
        si_report = json.loads((targets_dir / "self-improve.report.json").read_text())
        assert si_report["n"] == 3 and si_report["llm"]["backend"] == "local"
        assert si_report["fallback"] == 3 - si_report["accepted_first_attempt"]  # a random model

        judge = json.loads((work / judged / "judge.json").read_text())
        assert (judge["n"], judge["forget_quality"], judge["entailment"]) == (3, 1.0, 3.0)
        assert (judge["split"], judge["setting"]) == ("forget", "n3_s0_tself-improve")
        assert len((work / judged / "judge.jsonl").read_text().splitlines()) == 3

        # how requests are made reruns nothing
        wf.write_config({**config, "llm": {**config["llm"], "timeout": 7, "max_retries": 1,
                                           "concurrency": 1}})
        assert wf.planned_outputs(*targets) == set()
        # what the judge asks reruns the judging only
        wf.write_config({**config, "judge": {**config["judge"], "llm": {"temperature": 0.5}}})
        assert wf.planned_outputs(*targets) == {f"{judged}/judge.json", f"{judged}/judge.jsonl"}
        assert server.hits == asked + 3 * 3
