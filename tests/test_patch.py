import pytest
import torch

from editunlearn.evaluate import generate
from editunlearn.methods import UnlearnContext, available_methods, make_method
from editunlearn.models import ModelSpec
from editunlearn.patch import Adapter, Patch, register_adapter
from editunlearn.prompts import PromptFormatter
from editunlearn.testing import build_tiny_llama

QUESTIONS = ["What is the capital of Australia?", "Who wrote 1984?", "Hi?"]


def _outputs(model, tokenizer):
    fmt = PromptFormatter(tokenizer)
    prompts = [fmt.prompt_ids(q) for q in QUESTIONS]
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0]])).logits
    return logits, generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=10)


def test_patch_round_trip_reproduces_the_changed_model(tmp_path):
    model, tokenizer = build_tiny_llama(seed=0)
    before_logits, before_text = _outputs(model, tokenizer)
    name = "model.layers.1.mlp.down_proj.weight"
    with torch.no_grad():
        model.get_parameter(name).add_(torch.randn_like(model.get_parameter(name)))
    changed_logits, changed_text = _outputs(model, tokenizer)
    assert not torch.allclose(before_logits, changed_logits)

    Patch.from_changes("test", "tiny", model, [name]).save(tmp_path / "p.safetensors")
    loaded = Patch.load(tmp_path / "p.safetensors")
    assert list(loaded.tensors) == [name]  # only what changed is stored

    fresh, _ = build_tiny_llama(seed=0)
    loaded.apply(fresh)
    fresh_logits, fresh_text = _outputs(fresh, tokenizer)
    assert torch.equal(fresh_logits, changed_logits)
    assert fresh_text == changed_text


def test_adapter_patch_round_trip(tmp_path):
    @register_adapter("test_scale")
    def _install(model, config, state):
        module = model.get_submodule(config["module"])
        module.register_forward_hook(lambda m, i, o: o * state["scale"])

    model, tokenizer = build_tiny_llama(seed=0)
    patch = Patch("test", "tiny", adapters=[Adapter("test_scale", {"module": "model.layers.0.mlp"},
                                                    {"scale": torch.tensor(0.0)})])
    patch.save(tmp_path / "a.safetensors")
    Patch.load(tmp_path / "a.safetensors").apply(model)
    direct, _ = build_tiny_llama(seed=0)
    direct.get_submodule("model.layers.0.mlp").register_forward_hook(lambda m, i, o: o * 0.0)
    assert torch.equal(_outputs(model, tokenizer)[0], _outputs(direct, tokenizer)[0])


def test_patch_for_another_model_is_refused(tmp_path):
    big, _ = build_tiny_llama(seed=0, hidden=48)
    small, _ = build_tiny_llama(seed=0)
    name = "model.layers.0.mlp.down_proj.weight"
    Patch.from_changes("test", "big", big, [name]).save(tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="shape"):
        Patch.load(tmp_path / "p.safetensors").apply(small)


def test_base_method_returns_an_empty_patch(tiny):
    model, tokenizer = tiny
    assert "base" in available_methods()
    spec = ModelSpec(name="tiny", source="local", path="-", num_layers=2)
    ctx = UnlearnContext(model, tokenizer, spec, PromptFormatter(tokenizer), forget=[], retain=[],
                         hparams={})
    patch = make_method("base", {}).unlearn(ctx)
    assert patch.tensors == {} and patch.adapters == []


def test_unknown_method_names_the_alternatives():
    with pytest.raises(KeyError, match="available: .*base"):
        make_method("no_such_method", {})
