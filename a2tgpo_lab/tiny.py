"""Build a tiny Qwen-architecture causal LM and its word-level tokenizer locally (no model hub).

Why word-level: with byte-level BPE an invented name like "Velmora" splits into several pieces and a
~1M-parameter model struggles to copy it from a search result; with one token per word copying is a
single pointer lookup, so the tiny model learns the tool protocol in minutes on a CPU.

The tokenizer carries a ChatML chat template like Qwen's, so the rest of the package treats the tiny
model exactly like a Hugging Face chat model.
"""
from __future__ import annotations

from typing import Iterable

from .protocol import TAGS, protocol_words

IM_START, IM_END, EOS, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
ROLES = ("system", "user", "assistant", "tool")

# ChatML, as Qwen renders it. Newlines are kept in the template so the rendered text reads like
# Qwen's; the word-level pre-tokenizer drops them, so they cost no tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_word_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()):
    """A word-level ``PreTrainedTokenizerFast`` over every word in ``texts`` with a ChatML template.

    Words are split on whitespace and punctuation (each punctuation run is its own token). The
    protocol tags and ChatML markers are added tokens, so ``<search>`` is one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words: set[str] = set(extra_words) | set(protocol_words()) | set(ROLES)
    for text in texts:
        for tag in TAGS:
            text = text.replace(tag, " ")
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    specials = [PAD, UNK, EOS, IM_START, IM_END]
    vocab = {tok: i for i, tok in enumerate(specials + list(TAGS) + sorted(words - set(specials) - set(TAGS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = splitter
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    core.add_special_tokens(specials)
    core.add_tokens(list(TAGS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=IM_END, bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_qwen(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                    intermediate_size: int = 384, max_position_embeddings: int = 1024, seed: int = 0):
    """A randomly initialised ``Qwen3ForCausalLM`` sized for CPU training (≈1M parameters by default)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model
