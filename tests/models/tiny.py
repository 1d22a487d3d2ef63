"""Tiny random-weight models of every verified family, and a tokenizer for them (shared helpers)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

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
_GQA = dict(num_key_value_heads=2)
# weights large enough that scale, softcap and window visibly move the logits
_SHARP = dict(_GQA, initializer_range=0.2)
_MOE = dict(_GQA, num_experts_per_tok=2)
# layer 0 slides over a window of 4 tokens, layer 1 attends to all
_SLIDING = dict(_SHARP, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
_FAMILY_CONFIG: dict[str, dict] = {
    "llama": _GQA,
    "mistral": dict(_GQA, head_dim=8),
    "qwen2": _GQA,
    "qwen3": dict(_GQA, head_dim=8),
    "gpt_neox": {},
    "phi3": _GQA,
    "phi": dict(_SHARP, partial_rotary_factor=0.5),
    "stablelm": dict(_SHARP, partial_rotary_factor=0.5, qk_layernorm=True),
    "olmo": _GQA,
    "olmo2": _SHARP,  # q/k norm over all heads
    "olmo3": _SLIDING,
    "gemma": dict(_GQA, head_dim=8),
    "gemma2": dict(_SLIDING, head_dim=8, query_pre_attn_scalar=1, attn_logit_softcapping=1.0),
    "gemma3_text": dict(_SLIDING, head_dim=8, query_pre_attn_scalar=2),  # per-head q/k norm
    "starcoder2": dict(_SHARP, sliding_window=4),  # every layer slides
    "granite": dict(_SHARP, attention_multiplier=1.0),
    "cohere": dict(_SHARP, use_qk_norm=True),
    "cohere2": _SLIDING,  # full layers without RoPE
    "smollm3": dict(_GQA, no_rope_layers=[1, 0]),  # layer 1 without RoPE
    "mixtral": dict(_MOE, num_local_experts=4),
    "qwen2_moe": dict(_MOE, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=16),
    "qwen3_moe": dict(_MOE, num_experts=4, moe_intermediate_size=16, head_dim=8),
}

# transformers 5.17 runs gemma2 with sdpa by default, which drops the logit softcap: eager is its
# reference (the default from some later release on)
_EAGER = {"gemma2"}


def build(family: str, seed: int = 0, **overrides):
    """A tiny eval-mode model of ``family``: a verified model type, or any other transformers
    causal-LM model type with ``overrides`` completing its config (most use GQA: 4 query heads,
    2 KV heads)."""
    torch.manual_seed(seed)
    if family == "gpt2":
        gpt2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
        return GPT2LMHeadModel(GPT2Config(**gpt2 | overrides)).eval()
    cfg = AutoConfig.for_model(family, **_COMMON | _FAMILY_CONFIG.get(family, {}) | overrides)
    implementation = "eager" if family in _EAGER else None
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=implementation).eval()


FAMILIES = ("gpt2", *_FAMILY_CONFIG)


class CharTokenizer:
    """A real (if simple) tokenizer: one id per byte, folded into the tiny vocabulary; with ``bos``
    it starts a sequence with BOS (id 1) as Llama 3's tokenizer does, unless told not to add
    special tokens."""

    eos_token_id = 2
    name_or_path = "char-tokenizer"

    def __init__(self, bos: bool = False) -> None:
        self.bos_token_id = 1 if bos else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + b % (VOCAB - 3) for b in text.encode("utf-8")]
        start = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        return {"input_ids": start + ids}


def loaded(family: str = "llama", seed: int = 0, bos: bool = False, **overrides) -> LoadedModel:
    """A :class:`LoadedModel` around ``build(family)`` with :class:`CharTokenizer` (``bos``: one
    that starts every sequence with BOS)."""
    model = build(family, seed, **overrides)
    info = ModelInfo.of(model, f"tiny-{family}", None, "float32", "cpu")
    return LoadedModel(model=model, tokenizer=CharTokenizer(bos), info=info)


def float64_model(family: str = "llama", seed: int = 0):
    """``build(family)`` in float64: two attention paths then differ only by rounding far below
    float32's (the same attention, summed in another order), so they can be compared tightly."""
    model = build(family, seed).double()
    if hasattr(model, "set_experts_implementation") and model._can_set_experts_implementation():
        model.set_experts_implementation("eager")  # grouped_mm has no float64
    return model


def save_tiny(folder, family: str = "llama", bos: bool = False) -> None:
    """Save ``build(family)`` with a real character-level fast tokenizer (printable ASCII) to
    ``folder``; with ``bos`` its post-processor starts every sequence with ``^`` (BOS), as Llama 3's
    does with ``<|begin_of_text|>``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    build(family).save_pretrained(folder)
    vocab = {chr(32 + i): i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="^ $A", special_tokens=[("^", vocab["^"])])
    special = {"bos_token": "^"} if bos else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="~", **special).save_pretrained(folder)
