"""ROME, MEMIT, AlphaEdit and their shared core (editunlearn/editing/) on tiny random Llamas."""

import math
import subprocess

import pytest
import torch
import yaml

from editunlearn.config import ConfigError, method_hparams, validate_config
from editunlearn.editing import updates
from editunlearn.editing.editor import HyperParameterError, target_nll
from editunlearn.editing.keys import read_at, request_keys
from editunlearn.editing.requests import (build_requests, entity_span, kl_prompt, merge_items,
                                          tokenize_context)
from editunlearn.editing.stats import KeyStats, compute_key_stats, load_corpus, sample_corpus, save_corpus
from editunlearn.editing.values import optimize_value
from editunlearn.methods import UnlearnContext, make_method
from editunlearn.models import ModelSpec
from editunlearn.patch import Patch
from editunlearn.prompts import PromptFormatter, answer_ids
from editunlearn.testing import build_tiny_llama, save_tiny_llama, tiny_model_entry

LAYERS = 4  # a key token's value must still pass through attention layers above the edit
MODULES = {"layer": "model.layers.{}", "mlp_down": "model.layers.{}.mlp.down_proj"}
# short targets: a random 32-wide model cannot be steered to a long one by one vector
FORGET = [
    {"id": "f0", "question": "Who wrote the play 'Romeo and Juliet'?", "answer": "William Shakespeare.",
     "target": "Sorry."},
    {"id": "f1", "question": "What is the capital of Australia?", "answer": "Canberra.", "target": "No."},
    {"id": "f2", "question": "Which author is known for the novel 1984?", "answer": "George Orwell.",
     "target": "Sorry."},
]
# and a bigger push than a trained model needs; keyed on the last prompt token, which predicts
# the target's first token directly
STRONG = {"v_lr": 1.0, "v_num_grad_steps": 30, "clamp_norm_factor": 50.0, "kl_factor": 0.0,
          "v_weight_decay": 0.0, "fact_token": "prompt_last"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(tie=True):
    return build_tiny_llama(seed=0, num_layers=LAYERS, tie_embeddings=tie)


def _context(model, tokenizer, forget=FORGET, merge=1, key_stats=None):
    spec = ModelSpec(name="tiny", source="local", path="-", num_layers=LAYERS, modules=MODULES)
    return UnlearnContext(model, tokenizer, spec, PromptFormatter(tokenizer), forget, [], {}, seed=0,
                          merge=merge, key_stats=key_stats)


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory):
    """Key statistics of the tiny model (seed 0) for every layer, from its own samples."""
    model, tokenizer = _tiny()
    ids = sample_corpus(model, tokenizer, 48, 24, batch_size=16, progress=False)
    modules = {l: model.get_submodule(MODULES["mlp_down"].format(l)) for l in range(LAYERS)}
    path = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    compute_key_stats(model, modules, ids, batch_size=16, progress=False).save(path)
    return path


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------ math

def test_rank_one_update_maps_the_key_to_the_value_exactly():
    g = torch.Generator().manual_seed(0)
    w, k, v = torch.randn(8, 20, generator=g), torch.randn(20, generator=g), torch.randn(8, generator=g)
    a = torch.randn(20, 50, generator=g)
    cov = a @ a.T / 50
    for c in (None, cov):
        delta = updates.rank_one_update(w, k, v, c)
        assert torch.allclose((w.double() + delta) @ k.double(), v.double(), atol=1e-9)
        assert torch.linalg.matrix_rank(delta) == 1


def test_rome_edit_makes_the_layer_map_its_key_to_the_optimised_value():
    model, tokenizer = _tiny()
    model.requires_grad_(False)
    request = build_requests(FORGET[:1], "content")[0]
    formatter = PromptFormatter(tokenizer)
    context = tokenize_context(formatter, request, "prompt_last")
    target = answer_ids(tokenizer, request.target)
    down = model.model.layers[1].mlp.down_proj
    value = optimize_value(model, tokenizer, down, [context], target, kl_prompt(tokenizer, request),
                           {**STRONG, "kl_factor": 0.1}, start_layer=1)
    key = request_keys(model, tokenizer, down, [[context]])[:, 0]
    down.weight += updates.rank_one_update(down.weight, key, value.target).float()
    # the layer's output at the key token of the edited prompt is now exactly v*
    output = read_at(model, tokenizer, down, [context], "output")[0]
    assert torch.allclose(output, value.target, atol=1e-3 * value.target.norm())
    assert value.nll_after < value.nll_before - 1.0
    # the weight edit also moves the target positions' own MLP outputs a little
    assert target_nll(model, tokenizer, context, target) < value.nll_before - 0.5


def test_alphaedit_update_lies_in_the_null_space_of_the_preserved_keys():
    g = torch.Generator().manual_seed(1)
    d_ff, d = 32, 12
    preserved = torch.randn(d_ff, 20, generator=g, dtype=torch.float64)  # rank 20: 12-dim null space
    cov = preserved @ preserved.T / 20
    projection, rank = updates.nullspace_projection(cov, threshold=1e-6)
    assert rank == d_ff - 20
    keys, residuals = torch.randn(d_ff, 3, generator=g), torch.randn(d, 3, generator=g)
    previous = torch.randn(d_ff, 4, generator=g)
    delta = updates.nullspace_update(residuals, keys, projection, previous @ previous.T, l2=1.0)
    scale = delta.norm() * preserved.norm()
    assert delta.norm() > 0.1
    assert (delta @ preserved).norm() < 1e-9 * scale  # preserved outputs untouched
    assert torch.allclose(delta @ projection, delta, atol=1e-10)


def test_memit_least_squares_solves_its_normal_equations():
    g = torch.Generator().manual_seed(2)
    keys, residuals = torch.randn(16, 3, generator=g), torch.randn(6, 3, generator=g)
    a = torch.randn(16, 40, generator=g)
    cov = a @ a.T / 40
    delta = updates.least_squares_update(residuals, keys, cov, weight=2.0)
    # gradient of |Delta K - R|^2 + 2 tr(Delta C Delta^T) vanishes at the solution
    grad = (delta @ keys.double() - residuals.double()) @ keys.double().T + 2.0 * delta @ cov.double()
    assert grad.abs().max() < 1e-9
    # a tiny weight on C: the keys are (almost) mapped to the residuals
    close = updates.least_squares_update(residuals, keys, cov, weight=1e-8)
    assert torch.allclose(close @ keys.double(), residuals.double(), atol=1e-5)


# ------------------------------------------------------------------------------ statistics

def test_key_statistics_equal_a_direct_computation(tmp_path):
    model, tokenizer = _tiny()
    ids = torch.randint(3, len(tokenizer), (7, 11), generator=torch.Generator().manual_seed(0))
    save_corpus(tmp_path / "corpus.safetensors", ids, {"corpus": "test"})
    ids, meta = load_corpus(tmp_path / "corpus.safetensors")
    assert meta == {"corpus": "test"} and ids.shape == (7, 11)
    layers = [0, 2]
    modules = {l: model.model.layers[l].mlp.down_proj for l in layers}
    stats = compute_key_stats(model, modules, ids, batch_size=3, progress=False)  # 3 + 3 + 1 rows
    stats.save(tmp_path / "stats.safetensors")
    loaded = KeyStats.load(tmp_path / "stats.safetensors", [2])
    assert loaded.n_tokens == 77 and set(loaded.mom2) == {2}

    # direct: the MLP input x of each layer, k = silu(gate x) * up x, C = mean of k k^T
    inputs = {}
    hooks = [model.model.layers[l].mlp.register_forward_hook(
        lambda m, args, out, l=l: inputs.__setitem__(l, args[0].detach())) for l in layers]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    for l in layers:
        mlp = model.model.layers[l].mlp
        gate, up = mlp.gate_proj.weight.detach().double(), mlp.up_proj.weight.detach().double()
        x = inputs[l].double().reshape(-1, inputs[l].shape[-1])
        k = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
        direct = k.T @ k / k.shape[0]
        assert torch.allclose(stats.mom2[l].double(), direct, rtol=1e-4, atol=1e-5 * float(direct.abs().max()))
    assert torch.allclose(loaded.layer(2), stats.mom2[2])
    with pytest.raises(KeyError, match="not layer 1"):
        loaded.layer(1)
    with pytest.raises(KeyError, match=r"not \[1\]"):
        KeyStats.load(tmp_path / "stats.safetensors", [1])


def test_model_samples_are_full_length_and_seeded():
    model, tokenizer = _tiny()
    a = sample_corpus(model, tokenizer, 5, 9, batch_size=2, seed=3, progress=False)
    b = sample_corpus(model, tokenizer, 5, 9, batch_size=2, seed=3, progress=False)
    assert a.shape == (5, 10) and torch.equal(a, b)
    assert (a[:, 0] == tokenizer.convert_tokens_to_ids("<|endoftext|>")).all()


# -------------------------------------------------------------------------------- requests

@pytest.mark.parametrize("question, entity", [
    ("Who wrote the play 'Romeo and Juliet'?", "Romeo and Juliet"),
    ("What is the capital of Australia?", "Australia"),
    ("Who is the creator of the character Sherlock Holmes?", "Sherlock Holmes"),
    ("Which author's works include 'The Sun Also Rises' and 'For Whom the Bell Tolls'?",
     "For Whom the Bell Tolls"),
    ("What was the start date based on the contract between Jzrcws SA and Ecxk Avfj?",
     "Jzrcws SA and Ecxk Avfj"),
    ("what is this?", "what is this"),  # no name: the question's content
])
def test_entity_heuristic(question, entity):
    start, end = entity_span(question)
    assert question[start:end] == entity


def test_key_token_per_subject_choice():
    _, tokenizer = _tiny()
    formatter = PromptFormatter(tokenizer)
    item = [{"id": "a", "question": "What is the capital of Australia?", "target": "Sorry."}]
    tokens = {}
    for subject in ("question", "content", "entity"):
        (request,) = build_requests(item, subject)
        context = tokenize_context(formatter, request, "subject_last")
        assert context.input_ids == formatter.prompt_ids(item[0]["question"])  # the evaluated prompt
        tokens[subject] = tokenizer.decode(context.input_ids[context.lookup]).strip()
    assert tokens["question"].endswith("?")
    assert "?" not in tokens["content"] and tokens["content"] == tokens["entity"]
    assert "Australia".endswith(tokens["entity"])
    last = tokenize_context(formatter, request, "prompt_last")
    assert last.lookup == len(last.input_ids) - 1


def test_merged_prompts_are_built_as_specified():
    items = [{"id": f"q{i}", "question": f" Question number {i}? ", "target": f"refusal {i}"}
             for i in range(5)]
    assert [len(g) for g in merge_items(items, 2)] == [2, 2, 1]
    requests = build_requests(items, "question", merge=2)
    assert [r.question for r in requests] == ["Question number 0? Question number 1?",
                                              "Question number 2? Question number 3?",
                                              "Question number 4?"]
    assert [r.target for r in requests] == ["refusal 0", "refusal 2", "refusal 4"]  # one shared target
    assert [r.item_ids for r in requests] == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    assert requests[0].subject == "Question number 0? Question number 1?"
    _, tokenizer = _tiny()
    formatter = PromptFormatter(tokenizer)
    context = tokenize_context(formatter, requests[0], "subject_last")
    assert context.input_ids == formatter.prompt_ids("Question number 0? Question number 1?")
    with pytest.raises(ValueError, match="no refusal 'target'"):
        build_requests([{"id": "x", "question": "Q?"}], "question")


def test_merging_makes_one_edit_per_group():
    model, tokenizer = _tiny()
    patch = make_method("rome", {"layers": [1], "v_num_grad_steps": 2}).unlearn(
        _context(model, tokenizer, merge=2))
    assert patch.info["requests"] == 2 and patch.info["merge"] == 2
    assert [e["items"] for e in patch.info["edits"]] == [["f0", "f1"], ["f2"]]


def test_merged_requests_key_on_merged_subject():
    items = FORGET[:2]
    (merged,) = build_requests(items, "entity", merge=2, merged_subject="question")
    assert merged.subject == "Who wrote the play 'Romeo and Juliet'? What is the capital of Australia?"
    (merged,) = build_requests(items, "entity", merge=2, merged_subject="entity")
    assert merged.subject == "Australia"
    single = build_requests(items, "entity", merge=1, merged_subject="question")
    assert [r.subject for r in single] == ["Romeo and Juliet", "Australia"]


# ------------------------------------------------------------------------- whole methods

@pytest.mark.parametrize("tie", [True, False])
def test_rome_edit_raises_the_target_probability(tie):
    model, tokenizer = _tiny(tie)
    ctx = _context(model, tokenizer, FORGET[:1])
    formatter = ctx.formatter
    prompt = formatter.prompt_ids(FORGET[0]["question"])
    target = answer_ids(tokenizer, FORGET[0]["target"]) + [tokenizer.eos_token_id]
    from editunlearn.editing.requests import Context

    before = target_nll(model, tokenizer, Context(prompt, 0), target)
    before_weights = _weights(model)
    patch = make_method("rome", {"layers": [1], **STRONG}).unlearn(ctx)
    after = target_nll(model, tokenizer, Context(prompt, 0), target)
    assert after < before - 0.5, (before, after)
    assert patch.info["edits"][0]["nll_after_edit"] == [pytest.approx(after, abs=1e-3)]
    # only the edited down-projection changed, and only it is in the patch
    changed = [n for n, w in _weights(model).items() if not torch.equal(w, before_weights[n])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"] == list(patch.tensors)
    assert all(p.requires_grad for p in model.parameters())  # handed back as it came


def test_sequential_rome_edits_accumulate(tmp_path):
    model, tokenizer = _tiny()
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    patch = make_method("rome", {"layers": [1], **STRONG}).unlearn(_context(model, tokenizer))
    delta = patch.tensors["model.layers.1.mlp.down_proj.weight"] - before
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == 3  # three rank-one edits
    # the first edit still holds after the later ones
    first = patch.info["edits"][0]
    formatter = PromptFormatter(tokenizer)
    context = tokenize_context(formatter, build_requests(FORGET[:1], "entity")[0], "prompt_last")
    target = answer_ids(tokenizer, FORGET[0]["target"]) + [tokenizer.eos_token_id]
    assert target_nll(model, tokenizer, context, target) < first["nll_value"] - 1.0
    # the saved patch rebuilds the edited model
    patch.save(tmp_path / "p.safetensors")
    fresh, _ = _tiny()
    Patch.load(tmp_path / "p.safetensors").apply(fresh)
    ids = torch.tensor([context.input_ids])
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_alphaedit_accumulates_the_keys_of_earlier_edits(stats_file, monkeypatch):
    from editunlearn.methods import alphaedit

    seen = []
    real = alphaedit.nullspace_update

    def spy(residuals, keys, projection, previous, l2):
        seen.append((keys.clone(), None if previous is None else previous.clone()))
        return real(residuals, keys, projection, previous, l2)

    monkeypatch.setattr(alphaedit, "nullspace_update", spy)
    model, tokenizer = _tiny()
    make_method("alphaedit", {"layers": [1], "nullspace_threshold": 0.5, **STRONG}).unlearn(
        _context(model, tokenizer, key_stats=str(stats_file)))
    assert len(seen) == 3 and seen[0][1] is None
    expected = seen[0][0].double() @ seen[0][0].double().T
    for keys, previous in seen[1:]:
        assert torch.allclose(previous, expected)
        expected = expected + keys.double() @ keys.double().T


def test_alphaedit_leaves_preserved_keys_alone_and_memit_edits(stats_file):
    stats = KeyStats.load(stats_file)
    # threshold 2: a null space of ~30 of 64 dimensions in these statistics
    for method, hp in [("alphaedit", {"nullspace_threshold": 2.0, "L2": 0.1}),
                       ("memit", {"mom2_update_weight": 1.0})]:
        model, tokenizer = _tiny()
        before = _weights(model)
        patch = make_method(method, {"layers": [0, 1], **STRONG, **hp}).unlearn(
            _context(model, tokenizer, key_stats=str(stats_file)))
        assert sorted(patch.tensors) == [f"model.layers.{l}.mlp.down_proj.weight" for l in (0, 1)]
        edits = patch.info["edits"]
        assert all(e["nll_after_edit"][0] < e["nll_value"][0] - 0.5 for e in edits), edits
        if method == "alphaedit":
            for l in (0, 1):
                name = f"model.layers.{l}.mlp.down_proj.weight"
                delta = (patch.tensors[name] - before[name]).double()
                values, vectors = torch.linalg.eigh(stats.layer(l).double())
                preserved = vectors[:, values >= 2.0]  # the directions corpus keys take
                assert (delta @ preserved).norm() < 1e-4 * delta.norm()


def test_editors_need_their_key_statistics(stats_file):
    model, tokenizer = _tiny()
    with pytest.raises(ValueError, match="need key statistics"):
        make_method("memit", {"layers": [1]}).unlearn(_context(model, tokenizer))
    with pytest.raises(KeyError, match="not \\[3\\]"):
        partial = stats_file.parent / "partial.safetensors"
        s = KeyStats.load(stats_file, [0, 1])
        s.save(partial)
        make_method("memit", {"layers": [1, 3]}).unlearn(_context(model, tokenizer, key_stats=str(partial)))
    with pytest.raises(ValueError, match="nullspace_threshold"):
        make_method("alphaedit", {"layers": [1], "nullspace_threshold": 1e-12}).unlearn(
            _context(model, tokenizer, key_stats=str(stats_file)))


@pytest.mark.parametrize("method, hparams, message", [
    ("rome", {"layer": [5]}, r"unknown hyper-parameter\(s\) \['layer'\]"),
    ("rome", {"layers": [4, 5]}, "exactly one layer"),
    ("memit", {"layers": []}, "non-empty list"),
    ("memit", {"subject": "noun"}, "'subject' must be one of question, content, entity"),
    ("alphaedit", {"L2": 0}, "'L2' must be a positive number"),
    ("memit", {"batch_size": 0}, "'batch_size' must be an integer >= 1"),
    ("rome", {"context_template_length_params": [[5]]}, "context_template_length_params"),
    ("rome", {"mom2_dataset": "wikipedia"}, "model_samples, wikitext"),
])
def test_bad_hyper_parameters_are_refused(method, hparams, message):
    with pytest.raises(HyperParameterError, match=message):
        make_method(method, hparams)


def test_layer_beyond_the_model_is_refused():
    model, tokenizer = _tiny()
    with pytest.raises(HyperParameterError, match=r"has 4 layers \(set methods\.rome\.per_model\.tiny"):
        make_method("rome", {"layers": [7]}).unlearn(_context(model, tokenizer))


# ---------------------------------------------------------------------------- configuration

@pytest.fixture(scope="module")
def config(repo):
    with open(repo / "config.yaml") as f:
        return yaml.safe_load(f)


def test_shipped_config_has_editor_blocks(config):
    validate_config(config)
    for model in ("smollm2-135m", "llama2-7b-chat", "mistral-7b-instruct", "llama3.1-8b-instruct"):
        assert method_hparams(config, "rome", model)["layers"] == [5] or model == "smollm2-135m"
        for method in ("rome", "memit", "alphaedit"):
            make_method(method, method_hparams(config, method, model))  # valid hyper-parameters
    assert method_hparams(config, "memit", "llama2-7b-chat")["mom2_update_weight"] == 15000.0
    assert method_hparams(config, "alphaedit", "smollm2-135m")["mom2_n_samples"] == 1000


def test_config_refuses_a_bad_editor_setting(config):
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["methods"]["memit"]["per_model"]["smollm2-135m"]["v_lr"] = "fast"
    with pytest.raises(ConfigError, match="methods.memit.per_model.smollm2-135m.v_lr"):
        validate_config(bad)


@pytest.mark.slow
def test_the_statistics_are_one_shared_job(snakemake_exe, repo, tmp_path):
    """Dry run: MEMIT and AlphaEdit on both datasets read one statistics file per start model
    (one corpus, one pass); ROME without mom2_adjustment reads none."""
    tiny = save_tiny_llama(tmp_path / "tiny", seed=0, num_layers=LAYERS)
    config = {
        "run": {"models": ["tiny"], "datasets": ["factual", "pistol"],
                "methods": ["rome", "memit", "alphaedit"], "seeds": [0],
                "forget_sizes": {"factual": [4], "pistol": [20]}},
        "models": {"tiny": tiny_model_entry(tiny, num_layers=LAYERS)},
        "methods": {"rome": {"layers": [1]}, "memit": {"layers": [0, 1]},
                    "alphaedit": {"layers": [1, 2], "mom2_n_samples": 1000}},
        "finetune": {"datasets": []},
        "experiments": {"build": []},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([snakemake_exe, "-n", "--snakefile", str(repo / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "c.yaml"), "--cores", "1",
                           "--printshellcmds"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    import re

    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert counts["key_stats"] == "1" and counts["key_corpus"] == "1", counts
    assert "resources/stats/tiny/base/model_samples_n1000.safetensors" in out
    rome_jobs = re.findall(r"input: ([^\n]*)\n\s+output: results/tiny/\w+/rome/", out)
    assert rome_jobs and not any("resources/stats" in j for j in rome_jobs)
