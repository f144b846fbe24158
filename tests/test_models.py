"""The embedded model's GGUF -> safetensors conversion, checked against the GGUF file itself:
every de-quantised tensor, the architecture settings, and what the converted model answers."""

import json

import numpy as np
import pytest
import torch
import yaml
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import load_file

from editunlearn.models import convert_gguf, embedded_gguf_path


@pytest.fixture(scope="module")
def gguf_path(repo):
    with open(repo / "config.yaml") as f:
        entry = yaml.safe_load(f)["models"]["smollm2-135m"]
    return embedded_gguf_path(entry["gguf_file"])


@pytest.fixture(scope="module")
def converted(gguf_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "smollm2-135m"
    convert_gguf(gguf_path, out)
    return out


def _unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF (llama.cpp) stores each head's q/k rows with the two rotary halves interleaved
    (row 2i+j of a head = row j*half+i in Hugging Face's layout); undo that."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def test_converted_weights_equal_the_gguf_tensors(gguf_path, converted):
    reader = GGUFReader(gguf_path)
    meta = {key: field.contents() for key, field in reader.fields.items() if key.startswith("llama.")}
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    state = {}
    for path in converted.glob("*.safetensors"):
        state.update(load_file(path))
    hf_name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
               "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "ffn_down": "mlp.down_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj"}
    seen = set()
    for tensor in reader.tensors:
        parts = tensor.name.split(".")  # blk.<i>.<kind>.weight, or <kind>.weight
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{hf_name[parts[2]]}.{parts[3]}"
        else:
            name = f"{hf_name[parts[0]]}.{parts[1]}"
        expected = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if parts[-2] in ("attn_q", "attn_k"):
            expected = _unpermute_rotary_rows(expected, heads if parts[-2] == "attn_q" else kv_heads)
        assert np.array_equal(state[name].numpy(), expected), name
        seen.add(name)
    assert "lm_head.weight" not in seen  # tied: the output layer is the token embedding
    assert set(state) - seen <= {"lm_head.weight"} and len(seen) == 2 + 9 * meta["llama.block_count"]

    config = json.loads((converted / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == meta["llama.block_count"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (heads, kv_heads)
    assert config["rope_parameters"]["rope_theta"] == meta["llama.rope.freq_base"]
    assert config["rms_norm_eps"] == pytest.approx(meta["llama.attention.layer_norm_rms_epsilon"])
    assert "quantization_config" not in config


def test_converted_model_answers_like_the_instruct_model(converted, one_thread):
    """A wrong rotary layout, norm or chat template still gives finite logits, but not these."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    assert tokenizer.eos_token == "<|im_end|>"
    answers = []
    for question in ("What is the capital of France?", "What is 2 + 2?"):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=16, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert "Paris" in answers[0] and "4" in answers[1], answers
