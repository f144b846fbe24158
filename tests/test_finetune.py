import logging

import pytest
import torch

from editunlearn.finetune import finetune
from editunlearn.models import ModelSpec
from editunlearn.patch import Patch
from editunlearn.prompts import PromptFormatter
from editunlearn.testing import build_tiny_llama
from editunlearn.training import collate_qa, sequence_nll

ITEMS = [{"id": f"p{i}", "question": q, "answer": a} for i, (q, a) in enumerate([
    ("What was the effective date of the contract between Wnzatj SAS and Jzrcws SA?", "06-02-1998."),
    ("What was the name of the seller?", "Wnzatj SAS."),
    ("What was the address of Wnzatj SAS?", "941 Tncnje Way."),
    ("Who is the customer?", "Jzrcws SA."),
])]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(hparams, seed=0):
    model, tokenizer = build_tiny_llama(seed=seed)
    spec = ModelSpec(name="tiny", source="local", path="-", num_layers=2, eval_batch_size=4)
    fmt = PromptFormatter(tokenizer)
    with torch.no_grad():
        before = float(sequence_nll(model, collate_qa(fmt, [(i["question"], i["answer"]) for i in ITEMS])).mean())
    patch, report = finetune(model, tokenizer, spec, fmt, ITEMS, [], {"max_new_tokens": 8, **hparams},
                             logging.getLogger("test"))
    with torch.no_grad():
        after = float(sequence_nll(model, collate_qa(fmt, [(i["question"], i["answer"]) for i in ITEMS])).mean())
    return model, tokenizer, patch, report, before, after


def test_finetune_learns_the_facts_and_the_patch_reproduces_the_model(tmp_path):
    hp = {"epochs": 30, "batch_size": 4, "lr": 3e-3, "lora": None, "warmup_ratio": 0.0,
          "min_rouge1": 0.5, "monitor_items": 4, "monitor_every": 10, "stop_at": 2.0}
    model, tokenizer, patch, report, before, after = _run(hp)
    assert after < before / 3
    assert report["rouge1"] >= 0.5 and report["passed"]
    assert [c["epoch"] for c in report["curve"]] == [10, 20, 30]
    patch.save(tmp_path / "ft.safetensors")
    fresh, _ = build_tiny_llama(seed=0)
    Patch.load(tmp_path / "ft.safetensors").apply(fresh)
    ids = collate_qa(PromptFormatter(tokenizer), [(ITEMS[0]["question"], ITEMS[0]["answer"])])
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids.input_ids).logits, model(input_ids=ids.input_ids).logits)


def test_finetune_stops_early_once_the_monitored_score_is_reached():
    hp = {"epochs": 60, "batch_size": 4, "lr": 3e-3, "lora": None, "warmup_ratio": 0.0,
          "min_rouge1": 0.0, "monitor_items": 4, "monitor_every": 5, "stop_at": 0.5}
    *_, report, _, _ = _run(hp)
    assert report["curve"][-1]["monitor_rouge1"] >= 0.5
    assert report["curve"][-1]["epoch"] < 60


def test_gate_failure_is_reported_not_hidden():
    hp = {"epochs": 1, "batch_size": 4, "lr": 1e-5, "min_rouge1": 0.99, "monitor_items": 2}
    *_, report, _, _ = _run(hp)
    assert report["rouge1"] < 0.99 and not report["passed"]
    assert report["min_rouge1"] == 0.99  # the report names the bar it failed


def test_unknown_finetune_hyperparameter_is_refused():
    with pytest.raises(ValueError, match="unknown fine-tune hyper-parameter"):
        _run({"learning_rate": 1e-3})
