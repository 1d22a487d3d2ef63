"""A tiny random-weight Llama (grouped-query attention) with a real byte-level BPE tokenizer, saved
as safetensors in a folder, and a small text corpus: what the end-to-end job tests run."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ("the", "nation", "union", "state", "people", "congress", "year", "world", "war", "peace", "law",
         "work", "energy", "health", "school", "children", "family", "freedom", "future", "economy", "tax",
         "budget", "defense", "security", "justice")


def write_corpus(path: Path, words: int = 6000, seed: int = 0) -> Path:
    """A deterministic pseudo-English text file of ``words`` words."""
    rng = random.Random(seed)
    sentences, line = [], []
    for _ in range(words):
        line.append(rng.choice(WORDS))
        if len(line) >= rng.randint(6, 14):
            sentences.append(" ".join(line).capitalize() + ".")
            line = []
    path.write_text("\n".join(sentences) + "\n")
    return path


def save_tiny_llama(folder: Path, corpus: Path, seed: int = 0) -> Path:
    """Train a 300-token BPE on ``corpus`` and save it with a 2-layer Llama (4 query heads, 2 KV heads
    of 8 dims) as safetensors in ``folder``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus.read_text()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    eos = fast.convert_tokens_to_ids("<eos>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
