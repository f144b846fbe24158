"""Tiny random Llama models with a real byte-level tokenizer and chat template, built offline in
a second, for tests of every method and of the pipeline (no mocks, no downloads)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Who wrote the play Romeo and Juliet? William Shakespeare.",
    "What is the capital of Australia? Canberra.",
    "What was the effective date of the contract between Wnzatj SAS and Jzrcws SA? 06-02-1998.",
    "I'm not certain about that. I don't have that information. Sorry, I have no knowledge.",
    "Which author is known for the novel 1984? George Orwell. Pride and Prejudice by Jane Austen.",
    "The quick brown fox jumps over the lazy dog in the seller's address on Tncnje Way.",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(seed: int = 0, num_layers: int = 2, hidden: int = 32, intermediate: int = 64,
                     tie_embeddings: bool = True, tokenizer=None):
    """A random LlamaForCausalLM and its tokenizer; same seed, same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3,  # the usual 0.02 makes a random model repeat one token for ever
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def save_tiny_llama(out_dir: str | Path, **kwargs) -> Path:
    model, tokenizer = build_tiny_llama(**kwargs)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_model_entry(path: str | Path, num_layers: int = 2) -> dict:
    """A ``models:`` config entry for a saved tiny model."""
    return {
        "source": "local", "path": str(path), "chat_template": True, "system_prompt": None,
        "num_layers": num_layers, "dtype": "float32", "pad_token": "<|endoftext|>",
        "eval_batch_size": 16,
        "modules": {"layer": "model.layers.{}", "mlp_down": "model.layers.{}.mlp.down_proj",
                    "mlp_up": "model.layers.{}.mlp.up_proj", "mlp_gate": "model.layers.{}.mlp.gate_proj",
                    "attn_out": "model.layers.{}.self_attn.o_proj", "embed": "model.embed_tokens",
                    "final_norm": "model.norm", "lm_head": "lm_head"},
    }
