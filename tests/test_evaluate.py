import json

import pytest
import torch

from editunlearn.evaluate import evaluate_items, teacher_forced
from editunlearn.metrics import token_metrics
from editunlearn.prompts import PromptFormatter

ITEMS = [
    {"id": "a", "question": "What is the capital of Australia?", "answer": "Canberra"},
    {"id": "b", "question": "Who wrote 1984?", "answer": "George Orwell"},
    {"id": "c", "question": "Hi?", "answer": "Yes sir, I do."},
    {"id": "d", "question": "What was the effective date of the contract between Wnzatj SAS and "
                            "Jzrcws SA?", "answer": "06-02-1998."},
    {"id": "e", "question": "Which author is known for the novel 'Pride and Prejudice'?",
     "answer": "Jane Austen"},
]


def test_batched_equals_unbatched(tiny):
    model, tokenizer = tiny
    fmt = PromptFormatter(tokenizer)
    batched = evaluate_items(model, tokenizer, ITEMS, fmt, batch_size=5, max_new_tokens=12)
    single = evaluate_items(model, tokenizer, ITEMS, fmt, batch_size=1, max_new_tokens=12)
    assert [r["id"] for r in batched] == [it["id"] for it in ITEMS]  # input order kept
    assert any(r["generation"] for r in batched)  # the check below must compare real text
    for b, s in zip(batched, single):
        assert b["generation"] == s["generation"]
        for key in ("rouge1_recall", "prob", "prob_product", "mrr", "hit_rate"):
            assert abs(b[key] - s[key]) <= 1e-5 * max(1.0, abs(s[key])), key


def test_teacher_forcing_scores_exactly_the_answer_tokens(tiny):
    model, tokenizer = tiny
    fmt = PromptFormatter(tokenizer)
    prompt, answer = fmt.qa_ids("Who wrote 1984?", "George Orwell")
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0]
    expected = token_metrics(logits[len(prompt) - 1:len(prompt) - 1 + len(answer)],
                             torch.tensor(answer))
    got = teacher_forced(model, tokenizer, [(prompt, answer), fmt.qa_ids("Hi?", "Yes.")])[0]
    for key in ("prob", "mrr", "hit_rate", "nll"):
        assert abs(got[key] - expected[key]) < 1e-5
    assert got["n_answer_tokens"] == len(answer) == len(tokenizer("George Orwell",
                                                                  add_special_tokens=False)["input_ids"])


def test_prompt_is_the_chat_template_with_generation_prompt(tiny):
    _, tokenizer = tiny
    text = PromptFormatter(tokenizer)("Who wrote 1984?")
    assert text.endswith("<|im_start|>user\nWho wrote 1984?<|im_end|>\n<|im_start|>assistant\n")
    with_system = PromptFormatter(tokenizer, system_prompt="Be brief.")("Q?")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    plain = PromptFormatter(tokenizer, chat_template=False)("Q?")
    assert plain == "Question: Q?\nAnswer:"


def test_a_setting_summary_holds_no_timings(tmp_path):
    # a rerun with the same numbers must write the same bytes, or every table above it redraws
    from editunlearn.io import write_json
    from editunlearn.pipeline import summarize_setting

    paths = []
    for split, rouge1, seconds in (("forget", 0.1, 12.5), ("retain", 0.6, 80.25)):
        path = tmp_path / f"{split}.summary.json"
        write_json(path, {"split": split, "n": 3, "rouge1_recall": rouge1, "seconds": seconds})
        paths.append(str(path))
    out = tmp_path / "results/m/factual/gd/n4_s0/summary.json"
    summarize_setting(paths, str(out))
    first = out.read_bytes()
    for path, seconds in zip(paths, (99.0, 1.0)):  # the same numbers, another run's timings
        write_json(path, {**json.loads(open(path).read()), "seconds": seconds})
    summarize_setting(paths, str(out))
    assert out.read_bytes() == first
    summary = json.loads(first)
    assert summary["combined_score"] == pytest.approx(1.5) and "seconds" not in summary["splits"]["forget"]
