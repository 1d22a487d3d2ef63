"""Tiny random-weight models of every supported family, and a tokenizer for them (shared helpers)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from headq_core.models.loading import LoadedModel, ModelInfo

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def build(family: str, seed: int = 0, **overrides):
    """A tiny eval-mode model of ``family`` (llama uses GQA: 4 query heads, 2 KV heads)."""
    torch.manual_seed(seed)
    if family == "llama":
        cfg, cls = LlamaConfig(**_COMMON, num_key_value_heads=2), LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = MistralConfig(**_COMMON, num_key_value_heads=2, head_dim=8), MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = Qwen2Config(**_COMMON, num_key_value_heads=2), Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=8), Qwen3ForCausalLM
    elif family == "gpt_neox":
        cfg, cls = GPTNeoXConfig(**_COMMON), GPTNeoXForCausalLM
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
        cls = GPT2LMHeadModel
    else:
        raise KeyError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cls(cfg).eval()


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gpt2")


class CharTokenizer:
    """A real (if simple) tokenizer: one id per byte, folded into the tiny vocabulary."""

    eos_token_id = 2
    name_or_path = "char-tokenizer"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + b % (VOCAB - 3) for b in text.encode("utf-8")]}


def loaded(family: str = "llama", seed: int = 0, **overrides) -> LoadedModel:
    """A :class:`LoadedModel` around ``build(family)`` with :class:`CharTokenizer`."""
    model = build(family, seed, **overrides)
    info = ModelInfo.of(model, f"tiny-{family}", None, "float32", "cpu")
    return LoadedModel(model=model, tokenizer=CharTokenizer(), info=info)


def save_tiny(folder, family: str = "llama") -> None:
    """Save ``build(family)`` with a real character-level fast tokenizer (printable ASCII) to ``folder``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    build(family).save_pretrained(folder)
    vocab = {chr(32 + i): i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="~").save_pretrained(folder)
