"""GRACE and WISE (the lifelong editors) on a tiny random Llama: codebook look-up, radius conflicts,
routing, sequential accumulation, TIES merging, and patch round trips through batched, cached
generation."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from editunlearn.evaluate import evaluate_items, generate
from editunlearn.methods import UnlearnContext, make_method
from editunlearn.methods._lifelong import (EditBatch, capture_input, frozen, sequence_tracker,
                                           ties_merge)
from editunlearn.methods.grace import GraceCodebook, GraceEditor
from editunlearn.methods.wise import Wise, WiseEditor
from editunlearn.models import ModelSpec
from editunlearn.patch import Patch
from editunlearn.prompts import PromptFormatter

LOG = logging.getLogger("test")
LAYER = "model.layers.1.mlp.down_proj"
SPEC = ModelSpec(name="tiny", source="local", path="-", num_layers=2,
                 modules={"mlp_down": "model.layers.{}.mlp.down_proj"})
REFUSAL = "I don't have that information."
EDITED = ["Who wrote the play Romeo and Juliet?", "What is the capital of Australia?",
          "Which author is known for the novel 1984?", "Who wrote Pride and Prejudice?"]
OTHER = ["What jumps over the lazy dog?", "Where is the seller's address?",
         "What was the effective date of the contract?", "Who signed the contract with Jzrcws SA?"]
FORGET = [{"id": f"f{i}", "question": q, "answer": "William Shakespeare.", "target": REFUSAL}
          for i, q in enumerate(EDITED)]
RETAIN = [{"id": f"r{i}", "question": q, "answer": "06-02-1998."} for i, q in enumerate(OTHER)]
GRACE_QUICK = {"inner_params": [LAYER], "n_iter": 8, "edit_lr": 0.5}
WISE_QUICK = {"inner_params": [LAYER], "optimizer": "adam", "edit_lr": 0.05, "n_iter": 12,
              "save_freq": 1, "merge_freq": 2, "act_margin": [1.0, 5.0, 3.0], "loc_prompts": OTHER}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def fresh(tiny):
    """Factory of unedited copies of the session's tiny model (building one takes seconds,
    copying it milliseconds)."""
    model, tokenizer = tiny

    def make():
        return copy.deepcopy(model), tokenizer, PromptFormatter(tokenizer)

    return make


def _layer_io(model, formatter, question):
    """Input and output of the edited down-projection for one prompt (1, T, .)."""
    seen = {}
    handle = model.get_submodule(LAYER).register_forward_hook(
        lambda mod, inputs, out: seen.update(x=inputs[0].detach(), out=out.detach()))
    with torch.no_grad():
        logits = model(torch.tensor([formatter.prompt_ids(question)])).logits
    handle.remove()
    return seen["x"], seen["out"], logits


def _unlearn(method, hparams, model, tokenizer, formatter, forget=FORGET):
    ctx = UnlearnContext(model, tokenizer, SPEC, formatter, forget, RETAIN, hparams, seed=0)
    return make_method(method, hparams).unlearn(ctx)


# --- GRACE ---------------------------------------------------------------------------------------

def test_grace_key_hit_returns_the_stored_value_and_far_queries_pass_through(fresh):
    model, _, fmt = fresh()
    x, base_out, base_logits = _layer_io(model, fmt, EDITED[0])
    _, other_out, other_logits = _layer_io(model, fmt, OTHER[0])
    linear = model.get_submodule(LAYER)
    book = GraceCodebook(sequence_tracker(model), linear.in_features, linear.out_features)
    book.attach(model, LAYER)
    value = torch.randn(linear.out_features)
    book.add(x[0, -1], value, eps=1.0, label=REFUSAL)

    _, out, logits = _layer_io(model, fmt, EDITED[0])
    assert torch.allclose(out[0, -1], value)  # the key's position gets the value...
    assert torch.equal(out[0, :-1], base_out[0, :-1])  # ...and only that position
    assert not torch.allclose(logits[0, -1], base_logits[0, -1])
    _, out, logits = _layer_io(model, fmt, OTHER[0])
    assert book.lookup(x[0, -1][None])[2].item()
    assert torch.equal(out, other_out) and torch.equal(logits, other_logits)  # untouched

    copied = copy.deepcopy(model)  # the copy routes through its own codebook
    book.values.data.zero_()
    assert torch.allclose(_layer_io(copied, fmt, EDITED[0])[1][0, -1], value)


def test_grace_radius_conflicts_split_or_expand(fresh):
    model, _, fmt = fresh()
    editor = GraceEditor(model, SPEC, fmt, {**make_method("grace", {}).hparams, **GRACE_QUICK,
                                            "n_iter": 0}, LOG)
    k0, _ = editor.key_and_output(EDITED[0])
    k1, _ = editor.key_and_output(EDITED[1])
    d = float((k0 - k1).norm())
    editor.hp["eps"] = 0.75 * d  # two fresh balls would overlap: 0.75 d + 0.75 d > d

    editor.edit(EDITED[0], REFUSAL)
    editor.edit(EDITED[1], "Sorry, I have no knowledge.")  # other label: split
    assert len(editor.book) == 2 and editor.actions["split"] == 1
    assert torch.allclose(editor.book.eps, torch.tensor([d / 2, d / 2]))
    idx, _, hit = editor.book.lookup(torch.stack([k0, k1]))
    assert hit.all() and idx.tolist() == [0, 1]  # each question keeps its own entry

    model, _, fmt = fresh()
    editor = GraceEditor(model, SPEC, fmt, {**editor.hp}, LOG)
    editor.edit(EDITED[0], REFUSAL)
    editor.edit(EDITED[1], REFUSAL)  # same label: the entry grows to cover the new question
    assert len(editor.book) == 1 and editor.actions["expand"] == 1
    assert float(editor.book.eps[0]) == pytest.approx(d + 0.75 * d, rel=1e-5)
    idx, _, hit = editor.book.lookup(torch.stack([k0, k1]))
    assert hit.all() and idx.tolist() == [0, 0]


def test_grace_sequential_edits_accumulate(fresh):
    model, _, fmt = fresh()
    hp = {**make_method("grace", {}).hparams, **GRACE_QUICK}
    editor = GraceEditor(model, SPEC, fmt, hp, LOG)
    nll_before = [_target_nll(model, fmt, q) for q in EDITED[:3]]
    values = []
    for k, question in enumerate(EDITED[:3]):
        editor.edit(question, REFUSAL)
        values.append(editor.book.values[k].clone())
        for j in range(k + 1):  # every earlier edit is still there, untouched
            key, _ = editor.key_and_output(EDITED[j])
            idx, _, hit = editor.book.lookup(key[None])
            assert hit.item() and idx.item() == j
            assert torch.equal(editor.book.values[j], values[j])
    nll_after = [_target_nll(model, fmt, q) for q in EDITED[:3]]
    assert all(a < b - 0.2 for a, b in zip(nll_after, nll_before))


def _target_nll(model, fmt, question):
    batch = EditBatch(fmt, [(question, REFUSAL)], model, LAYER)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(F.cross_entropy(logits[batch.rows, batch.cols], batch.targets))


# --- WISE ----------------------------------------------------------------------------------------

def test_wise_routes_in_scope_prompts_to_the_side_memory_and_others_to_the_main_memory(fresh):
    model, tok, fmt = fresh()
    reference, _, _ = fresh()
    nll_before = [_target_nll(model, fmt, q) for q in EDITED]
    patch = _unlearn("wise", WISE_QUICK, model, tok, fmt)
    assert patch.info["memories"] == 2 and patch.info["merges"] == 2  # 4 edits, merge every 2
    assert patch.info["edited_prompts_routed"] == 4 and patch.info["loc_prompts_routed"] == 0
    for question in EDITED:  # side memory: the layer's output is W' x from the routing token on
        x, out, _ = _layer_io(model, fmt, question)
        base = F.linear(x, model.get_submodule(LAYER).weight)
        assert not torch.allclose(out[0, -1], base[0, -1])
    for question in OTHER:  # main memory: the model is exactly the unedited one
        _, _, logits = _layer_io(model, fmt, question)
        _, _, ref_logits = _layer_io(reference, fmt, question)
        assert torch.equal(logits, ref_logits)
    nll_after = [_target_nll(model, fmt, q) for q in EDITED]
    assert all(a < b for a, b in zip(nll_after, nll_before))


@pytest.mark.parametrize("agg", ["max", "mean"])
def test_wise_scores_every_out_of_scope_prompt_as_a_direct_computation(fresh, agg):
    """loc_select: hardest scores all out-of-scope prompts from their activations stored once
    (the shared chat preamble kept a single time); it must equal scoring each prompt alone."""
    from editunlearn.methods.wise import sequence_scores
    model, _, fmt = fresh()
    hp = Wise({**WISE_QUICK, "act_agg": agg}).hparams
    with frozen(model):
        editor = WiseEditor(model, SPEC, fmt, hp, OTHER + EDITED, LOG)
        delta = torch.randn(model.get_submodule(LAYER).weight.shape, generator=torch.Generator().manual_seed(0))
        got = editor._loc_scores(delta)
        for i, question in enumerate(OTHER + EDITED):
            x, real = editor._inputs([question])
            direct = sequence_scores(F.linear(x.float(), delta).norm(dim=-1), real, agg)[0].amax()
            assert torch.allclose(got[i], direct, rtol=1e-4), question
    assert editor.loc_rows.shape[0] < int(editor.loc_real.sum())  # the preamble is stored once


def test_wise_threshold_keeps_near_duplicate_out_of_scope_prompts_off_a_merged_memory(fresh):
    """Out-of-scope prompts one word away from the edits: after the merge no memory's threshold
    lets any of them through (threshold_above_loc), whatever the shards' margins reached."""
    near = [q.replace("Who", "Whom").replace("What", "Which").replace("Which author", "What author")
            for q in EDITED]
    assert all(a != b for a, b in zip(near, EDITED))
    model, tok, fmt = fresh()
    hp = {**WISE_QUICK, "n_iter": 4, "loc_prompts": near + OTHER}
    patch = _unlearn("wise", hp, model, tok, fmt)
    assert patch.info["loc_prompts_routed"] == 0
    with frozen(model):
        editor = WiseEditor(model, SPEC, fmt, Wise(hp).hparams, near + OTHER, LOG)
        for memory, threshold in zip(patch.adapters[0].state["deltas"],
                                     patch.adapters[0].state["thresholds"]):
            assert float(editor._loc_scores(memory).max()) < float(threshold)


def test_wise_routes_an_answer_as_its_question_was_routed(fresh):
    """Answer tokens do not move the routing decision: a memory whose threshold lies between
    the prompt's highest token score and a higher one in the answer leaves the teacher-forced
    scores of that answer exactly the unedited model's."""
    from editunlearn.evaluate import teacher_forced
    from editunlearn.methods.wise import WiseMemories
    model, tok, fmt = fresh()
    reference, _, _ = fresh()
    linear = model.get_submodule(LAYER)
    prompt = fmt.prompt_ids(OTHER[0])
    answer = tok(" " + EDITED[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad(), capture_input(model, LAYER) as seen:
        model(torch.tensor([prompt + answer]))
    inputs = seen[0][0].float()
    # a rank-one memory reading the direction of the answer token least like any prompt token
    units = inputs[len(prompt):] / inputs[len(prompt):].norm(dim=-1, keepdim=True)
    overlap = (inputs[:len(prompt)] @ units.T).abs().amax(0) / inputs[len(prompt):].norm(dim=-1)
    token = int(overlap.argmin())
    assert float(overlap[token]) < 0.99
    delta = torch.outer(torch.ones(linear.out_features), units[token])
    scores = F.linear(inputs, delta).norm(dim=-1)
    top_prompt, top_answer = float(scores[:len(prompt)].max()), float(scores[len(prompt):].max())
    memories = WiseMemories(sequence_tracker(model), linear.in_features, linear.out_features, "max")
    memories.deltas = delta[None]
    memories.thresholds = torch.tensor([(top_prompt + top_answer) / 2])
    memories.attach(model, LAYER)
    pair = [(prompt, answer)]
    assert teacher_forced(model, tok, pair) == teacher_forced(reference, tok, pair)
    # the same tokens as one prompt do cross the threshold: the memory is live
    with torch.no_grad():
        ids = torch.tensor([prompt + answer])
        assert not torch.allclose(model(ids).logits[0, -1], reference(ids).logits[0, -1])


def test_wise_sequential_edits_accumulate_across_shards_and_merges(fresh):
    model, _, fmt = fresh()
    hp = Wise(WISE_QUICK).hparams
    with frozen(model):
        editor = WiseEditor(model, SPEC, fmt, hp, OTHER, LOG)
        for k, question in enumerate(EDITED):
            editor.edit(question, REFUSAL)
            # after edit k, prompts 1..k all route to a side memory (none dropped by the
            # shard reset or the merge); the out-of-scope ones do not
            x, real = editor._inputs(EDITED[:k + 1])
            assert editor.memories.routed_prompts(x, real).all(), f"after edit {k + 1}"
            x, real = editor._inputs(OTHER)
            assert not editor.memories.routed_prompts(x, real).any()
    assert len(editor.memories) == 2


def test_ties_merge_of_known_vectors():
    t1 = torch.tensor([1.0, -2.0, 0.5, 0.0])
    t2 = torch.tensor([3.0, 1.0, -0.5, 0.2])
    t3 = torch.tensor([-1.0, -1.0, 0.4, 0.0])
    # no trimming: elected signs (+, -, +, +); mean of the agreeing non-zero entries
    assert torch.allclose(ties_merge([t1, t2, t3], density=1.0), torch.tensor([2.0, -1.5, 0.45, 0.2]))
    # keep the top half by magnitude: [1,-2,0,0], [3,1,0,0], [-1,-1,0,0]; signs (+, -, 0, 0)
    assert torch.allclose(ties_merge([t1, t2, t3], density=0.5, weight=2.0),
                          torch.tensor([4.0, -3.0, 0.0, 0.0]))


# --- both: patches, batching, KV cache, errors -----------------------------------------------------

@pytest.mark.parametrize("method,hparams", [
    ("grace", GRACE_QUICK),
    ("grace", {**GRACE_QUICK, "replacement": "replace_all"}),
    ("wise", WISE_QUICK),
])
def test_patch_round_trip_gives_identical_generations(tmp_path, method, hparams, fresh):
    model, tok, fmt = fresh()
    patch = _unlearn(method, hparams, model, tok, fmt, FORGET[:2])
    patch.save(tmp_path / "patch.safetensors")
    items = FORGET[:2] + RETAIN[:2]
    edited = evaluate_items(model, tok, items, fmt, batch_size=3, max_new_tokens=8)

    other, _, _ = fresh()
    Patch.load(tmp_path / "patch.safetensors").apply(other)
    loaded = evaluate_items(other, tok, items, fmt, batch_size=3, max_new_tokens=8)
    keys = ["generation", "prob", "mrr", "hit_rate"]
    assert [[r[k] for k in keys] for r in loaded] == [[r[k] for k in keys] for r in edited]

    # routing does not depend on padding (batch of 4, left padded, vs one at a time) or on
    # the KV cache (token-by-token decoding vs recomputing the whole sequence each step)
    prompts = [fmt.prompt_ids(it["question"]) for it in items]
    one_by_one = generate(other, tok, prompts, batch_size=1, max_new_tokens=8)
    assert one_by_one == [r["generation"] for r in loaded]
    other.generation_config.use_cache = False
    assert generate(other, tok, prompts, batch_size=3, max_new_tokens=8) == one_by_one
    unedited, _, _ = fresh()
    base = evaluate_items(unedited, tok, items, fmt, batch_size=3, max_new_tokens=8)
    # questions never edited answer exactly as before; the edited ones differ
    assert [[r[k] for k in keys] for r in base[2:]] == [[r[k] for k in keys] for r in loaded[2:]]
    assert all(b["prob"] != r["prob"] for b, r in zip(base[:2], loaded[:2]))


def test_bad_hyper_parameters_name_the_key(fresh):
    with pytest.raises(ValueError, match="'eps'"):
        make_method("grace", {"eps": -1.0})
    with pytest.raises(ValueError, match="'replacement' must be one of"):
        make_method("grace", {"replacement": "replace_prompt"})
    with pytest.raises(ValueError, match="unknown hyper-parameter.*'epsilon'"):
        make_method("grace", {"epsilon": 1.0})
    with pytest.raises(ValueError, match="'merge_freq'.*multiple of 'save_freq'"):
        make_method("wise", {"save_freq": 3, "merge_freq": 4})
    with pytest.raises(ValueError, match="'act_margin'"):
        make_method("wise", {"act_margin": [5.0, 1.0]})
    model, tok, fmt = fresh()
    with pytest.raises(ValueError, match="'inner_params'"):
        _unlearn("grace", {"inner_params": ["model.layers[1].mlp"]}, model, tok, fmt)


def test_layer_input_capture_is_unchanged_by_the_adaptor(fresh):
    # keys and routing scores are computed from the layer's input, which editing that same
    # layer cannot change: the premise of caching it across optimisation steps
    model, tok, fmt = fresh()
    with capture_input(model, LAYER) as before, torch.no_grad():
        model(torch.tensor([fmt.prompt_ids(EDITED[0])]))
    _unlearn("grace", GRACE_QUICK, model, tok, fmt, FORGET[:1])
    with capture_input(model, LAYER) as after, torch.no_grad():
        model(torch.tensor([fmt.prompt_ids(EDITED[0])]))
    assert torch.equal(before[0], after[0])
