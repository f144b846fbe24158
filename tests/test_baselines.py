import copy
import math

import pytest
import torch
import yaml

from editunlearn.config import ConfigError, method_hparams, validate_config
from editunlearn.io import write_json, write_jsonl
from editunlearn.methods import UnlearnContext, make_method
from editunlearn.methods._finetune_loop import _step_batches, linear_warmup_decay
from editunlearn.models import ModelSpec
from editunlearn.patch import Patch
from editunlearn.prompts import PromptFormatter
from editunlearn.testing import build_tiny_llama, tiny_model_entry
from editunlearn.training import DivergenceError, collate_qa, sequence_logprob, sequence_nll

BASELINES = ["ga", "gd", "kl", "dpo", "npo", "idk_dpo"]
REFUSAL = "I don't have that information."
FORGET = [
    {"id": "f0", "question": "Who wrote the play Romeo and Juliet?", "answer": "William Shakespeare.",
     "target": REFUSAL},
    {"id": "f1", "question": "What is the capital of Australia?", "answer": "Canberra.",
     "target": "Sorry, I have no knowledge."},
    {"id": "f2", "question": "Which author is known for the novel 1984?", "answer": "George Orwell.",
     "target": REFUSAL},
    {"id": "f3", "question": "Who wrote Pride and Prejudice?", "answer": "Jane Austen.",
     "target": "I'm not certain about that."},
]
RETAIN = [
    {"id": "r0", "question": "What was the effective date of the contract?", "answer": "06-02-1998."},
    {"id": "r1", "question": "Where is the seller's address?", "answer": "Tncnje Way."},
    {"id": "r2", "question": "What jumps over the lazy dog?", "answer": "The quick brown fox."},
    {"id": "r3", "question": "Who signed the contract with Jzrcws SA?", "answer": "Wnzatj SAS."},
]
# a few steps at a large rate: enough to move a tiny random model, not to blow it up
QUICK = {"epochs": 3, "batch_size": 2, "lr": 1e-2, "warmup_ratio": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def _context():
    model, tokenizer = build_tiny_llama(seed=0)
    spec = ModelSpec(name="tiny", source="local", path="-", num_layers=2)
    return UnlearnContext(model, tokenizer, spec, PromptFormatter(tokenizer), FORGET, RETAIN, {},
                          seed=0)


def _mean_nll(ctx, items, answer_key="answer"):
    batch = collate_qa(ctx.formatter, [(it["question"], it[answer_key]) for it in items])
    with torch.no_grad():
        return sequence_nll(ctx.model, batch).mean().item()


def _logits(model, tokenizer):
    ids = PromptFormatter(tokenizer).prompt_ids(RETAIN[0]["question"])
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("method", BASELINES)
def test_method_unlearns_the_forget_answers(method):
    ctx = _context()
    answer_before = _mean_nll(ctx, FORGET)
    preference_before = answer_before - _mean_nll(ctx, FORGET, "target")
    patch = make_method(method, QUICK).unlearn(ctx)
    answer_after = _mean_nll(ctx, FORGET)
    if method in ("dpo", "idk_dpo"):  # trained towards the refusal, not away from the answer
        assert answer_after - _mean_nll(ctx, FORGET, "target") > preference_before + 0.5
    else:
        assert answer_after > answer_before + 1.0
    assert patch.method == method and patch.info["steps"] == 6
    # default LoRA: the patch is the factors only, far smaller than the weights they change
    (adapter,) = patch.adapters
    assert patch.tensors == {} and adapter.kind == "lowrank_delta"
    factor_size = sum(t.numel() for t in adapter.state.values())
    changed_size = sum(ctx.model.get_parameter(n).numel() for n in adapter.config["params"])
    assert len(adapter.config["params"]) == 14 and factor_size < changed_size / 2


def test_answer_nll_equals_the_full_forward_pass_by_hand():
    """The measure every baseline trains on (and these tests grade with) projects only the answer
    positions onto the vocabulary; rows of unequal prompt and answer lengths must still score
    exactly the tokens a plain forward pass gives them."""
    ctx = _context()
    pairs = [(FORGET[0]["question"], FORGET[0]["answer"]), ("Hi?", RETAIN[2]["answer"] + " Indeed, it does.")]
    batch = collate_qa(ctx.formatter, pairs)
    with torch.no_grad():
        got_nll, got_sum = sequence_nll(ctx.model, batch), sequence_logprob(ctx.model, batch)
    eos = ctx.tokenizer.eos_token_id
    for row, (question, answer) in enumerate(pairs):
        prompt, target = ctx.formatter.qa_ids(question, answer)
        target = target + [eos]
        with torch.no_grad():  # one unpadded sequence, every position projected
            logits = ctx.model(torch.tensor([prompt + target])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
        token_logp = logp[torch.arange(len(target)), torch.tensor(target)]
        assert got_sum[row].item() == pytest.approx(token_logp.sum().item(), abs=1e-4)
        assert got_nll[row].item() == pytest.approx(-token_logp.mean().item(), abs=1e-5)
    assert len(ctx.formatter.prompt_ids(pairs[0][0])) != len(ctx.formatter.prompt_ids(pairs[1][0]))


@pytest.mark.parametrize("method, term, first", [
    ("npo", "npo", 2 / 0.1 * math.log(2)),  # (2 / beta) log(1 + 1): pi = pi_ref at the start
    ("idk_dpo", "dpo", math.log(2)),  # -log sigmoid(0)
])
def test_preference_losses_start_from_their_closed_form(method, term, first):
    patch = make_method(method, {**QUICK, "epochs": 1}).unlearn(_context())
    assert patch.info["first_loss"][term] == pytest.approx(first, rel=1e-5)
    doubled = make_method(method, {**QUICK, "epochs": 1, "retain_weight": 2.0}).unlearn(_context())
    assert doubled.info["first_loss"]["retain_nll"] == pytest.approx(
        2 * patch.info["first_loss"]["retain_nll"], rel=1e-5)


def test_schedule_accumulation_and_data_order():
    # warmup of 2 then a linear fall over the remaining 8 optimiser steps, never to 0
    factor = linear_warmup_decay(2, 10)
    assert [factor(s) for s in range(10)] == pytest.approx([1 / 3, 2 / 3] + [k / 8 for k in range(8, 0, -1)])
    # 4 items, micro-batches of 1, two per optimiser step: 2 steps an epoch
    patch = make_method("ga", {**QUICK, "batch_size": 1, "gradient_accumulation_steps": 2}).unlearn(_context())
    assert patch.info["steps"] == 3 * 2

    def forget_order(n_retain):
        return [[f for f, _ in group] for _, group in _step_batches(4, n_retain, 2, 1, 3, seed=0)]

    # GA (no retain set) and GD see the forget items in the same order for the same seed
    assert forget_order(0) == forget_order(4) != [[[0, 1]], [[2, 3]]] * 3


def test_retain_terms_protect_the_retain_set():
    budget = {**QUICK, "epochs": 8, "lora": None}  # same seed, data order and steps for all three
    increase = {}
    for method in ("ga", "gd", "kl"):
        ctx = _context()
        before = _mean_nll(ctx, RETAIN)
        make_method(method, budget).unlearn(ctx)
        increase[method] = _mean_nll(ctx, RETAIN) - before
    assert increase["ga"] > 1.0, increase  # GA damages the retain set ...
    assert increase["gd"] < 0.5 * increase["ga"], increase  # ... the retain terms much less
    assert increase["kl"] < 0.8 * increase["ga"], increase


@pytest.mark.parametrize("method, hparams", [
    ("gd", {"lora": None, "trainable": ["mlp"]}),
    ("kl", {"lora": None}),
    ("npo", {}),
    ("idk_dpo", {"lora": {"r": 2, "target_modules": ["down_proj", "q_proj"]}}),
])
def test_saved_patch_reproduces_the_unlearned_model(tmp_path, method, hparams):
    ctx = _context()
    before = _logits(ctx.model, ctx.tokenizer)
    patch = make_method(method, {**QUICK, **hparams}).unlearn(ctx)
    unlearned = _logits(ctx.model, ctx.tokenizer)
    assert not torch.allclose(before, unlearned)
    patch.save(tmp_path / "patch.safetensors")

    fresh, tokenizer = build_tiny_llama(seed=0)
    Patch.load(tmp_path / "patch.safetensors").apply(fresh)
    assert torch.equal(_logits(fresh, tokenizer), unlearned)
    if hparams.get("trainable"):  # only the chosen parameters travel in the patch
        assert patch.tensors and all("mlp" in name for name in patch.tensors)
    if method == "kl":  # trainable null: every parameter, tied embedding stored once
        assert set(patch.tensors) == {n for n, _ in fresh.named_parameters()}
    if hparams.get("lora"):
        assert sorted(patch.adapters[0].config["params"]) == sorted(
            f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.q_proj"))


@pytest.mark.parametrize("hparams, detector", [
    ({**QUICK, "lr": 1e30}, "loss became nan at step 2"),
    ({**QUICK, "lr": 1e30, "lora": None}, "became nan at step 2"),
    # one step: no later loss sees it, only the merged LoRA weights overflow
    ({**QUICK, "lr": 1e30, "epochs": 1, "batch_size": 4}, r"weight model\.layers\.\S+ became inf at step 1"),
])
def test_divergence_raises_with_a_clear_message(hparams, detector):
    ctx = _context()
    before = _logits(ctx.model, ctx.tokenizer)
    with pytest.raises(DivergenceError, match=detector + r": training diverged; lower the learning "
                                                        r"rate .* No patch was written"):
        make_method("ga", hparams).unlearn(ctx)
    assert all(p.requires_grad for p in ctx.model.parameters())  # the model is handed back usable
    if "lora" not in hparams:  # with LoRA nothing reaches the weights until training succeeded
        assert torch.equal(_logits(ctx.model, ctx.tokenizer), before)


def test_divergence_in_a_job_writes_no_patch(tmp_path, tiny_dir):
    from editunlearn.pipeline import unlearn_job

    write_json(tmp_path / "split.json", {"forget": FORGET, "retain": RETAIN})
    write_jsonl(tmp_path / "targets.jsonl", [{"id": it["id"], "target": it["target"]} for it in FORGET])
    entry = tiny_model_entry(tiny_dir)
    spec = {"name": "tiny", **{k: entry[k] for k in ("chat_template", "system_prompt", "num_layers",
                                                    "modules", "dtype", "pad_token", "eval_batch_size")}}
    out = tmp_path / "patch.safetensors"
    with pytest.raises(DivergenceError):
        unlearn_job(model_dir=tiny_dir, split_path=tmp_path / "split.json",
                    targets_path=tmp_path / "targets.jsonl", method="gd", setting="n4_s0",
                    spec_params=spec, hparams={**QUICK, "lr": 1e30}, device="cpu", out_path=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.json", "targets.jsonl"]


@pytest.mark.parametrize("lora", [None, {"r": 2}])
def test_kl_reference_can_be_the_model_before_fine_tuning(lora):
    def first_kl(hparams, load_base):
        ctx = _context()
        ctx.load_base_model = load_base
        patch = make_method("kl", {**QUICK, "epochs": 1, "lora": lora, **hparams}).unlearn(ctx)
        return patch.info["first_loss"]["retain_kl"]

    pre_finetune = lambda: build_tiny_llama(seed=1)[0]  # noqa: E731 - stands in for the base
    # the first step sees the starting model itself as reference: nothing to diverge from yet
    assert first_kl({}, pre_finetune) < 1e-6
    assert first_kl({"reference": "base"}, pre_finetune) > 0.01
    # without a fine-tuning stage the base is the starting model
    assert first_kl({"reference": "base"}, None) < 1e-6
    with pytest.raises(ValueError, match="'reference' must be 'start' or 'base'"):
        make_method("kl", {"reference": "finetuned"})


def test_retain_use_is_declared():
    assert not make_method("ga", {}).uses_retain
    assert all(make_method(m, {}).uses_retain for m in ("gd", "kl", "dpo", "npo", "idk_dpo"))
    assert not make_method("npo", {"retain_weight": 0.0}).uses_retain
    ctx = _context()
    ctx.retain = []
    with pytest.raises(ValueError, match="retain set, which is empty"):
        make_method("gd", QUICK).unlearn(ctx)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown hyper-parameter.*learning_rate"):
        make_method("ga", {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="set lora: null"):
        make_method("ga", {**QUICK, "trainable": ["mlp"]}).unlearn(_context())
    with pytest.raises(ValueError, match="unknown key.*rank"):
        make_method("ga", {**QUICK, "lora": {"rank": 4}}).unlearn(_context())


@pytest.fixture
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def test_shipped_config_has_valid_baseline_blocks(config):
    assert set(BASELINES) <= set(config["methods"])
    validate_config(config)
    assert method_hparams(config, "dpo", "smollm2-135m")["lr"] == 1.5e-5
    assert method_hparams(config, "ga", "smollm2-135m")["lora"] == {
        "r": 8, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"]}


@pytest.mark.parametrize("block, key", [
    ({"learning_rate": 1e-5}, "methods.ga.learning_rate"),
    ({"epochs": 2.5}, "methods.ga.epochs"),
    ({"lora": "yes"}, "methods.ga.lora"),
])
def test_config_refuses_bad_baseline_hyper_parameters(config, block, key):
    bad = copy.deepcopy(config)
    bad["methods"]["ga"] = block
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert f"'{key}'" in str(err.value)
