"""Tiny seeded random encoder-decoder models (Marian, T5, BART) with real fast tokenizers, built offline.

Each family keeps its real token-id conventions, because those are what the exporter and the device
generation loop must get right: Marian starts decoding with the pad token (the last id), T5 with pad 0,
BART with eos after wrapping sources in ``<s> … </s>``. Host-only (needs torch and transformers).
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import WORDS

KINDS = ("marian", "t5", "bart")

# Special tokens in the order that puts them at each family's usual ids.
_SPECIALS = {
    "marian": {"head": ["</s>", "<unk>"], "tail": ["<pad>"]},            # eos 0, unk 1, pad = last id
    "t5": {"head": ["<pad>", "</s>", "<unk>"], "tail": []},              # pad 0, eos 1, unk 2
    "bart": {"head": ["<s>", "<pad>", "</s>", "<unk>"], "tail": []},     # bos 0, pad 1, eos 2, unk 3
}


def _save_tokenizer(folder: Path, kind: str) -> dict[str, int]:
    """A word-level fast tokenizer over ``WORDS`` that appends eos (BART: ``<s> … </s>``); returns special ids."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS[kind]
    vocab = {token: index for index, token in enumerate(specials["head"] + list(WORDS) + specials["tail"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    if kind == "bart":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])],
        )
    extra = {"bos_token": "<s>"} if kind == "bart" else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", **extra)
    fast.save_pretrained(folder)
    ids = {"vocab_size": len(vocab), "pad": vocab["<pad>"], "eos": vocab["</s>"]}
    if kind == "bart":
        ids["bos"] = vocab["<s>"]
    return ids


def _config(kind: str, ids: dict[str, int]):
    from transformers import BartConfig, MarianConfig, T5Config

    if kind == "t5":
        # T5 has no init_std; its initializer_factor already scales by d_model**-0.5, so 1.0 is "wide".
        return T5Config(vocab_size=ids["vocab_size"], d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        feed_forward_proj="relu", pad_token_id=ids["pad"], eos_token_id=ids["eos"],
                        decoder_start_token_id=ids["pad"], initializer_factor=1.0)
    shape = {"vocab_size": ids["vocab_size"], "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
             "decoder_ffn_dim": 64, "max_position_embeddings": 64,
             # Wider init than the usual 0.02: random features that a tiny adapter can learn from in tests.
             "init_std": 0.2, "pad_token_id": ids["pad"], "eos_token_id": ids["eos"], "forced_eos_token_id": ids["eos"]}
    if kind == "marian":
        return MarianConfig(decoder_start_token_id=ids["pad"], activation_function="swish", scale_embedding=True,
                            **shape)
    return BartConfig(bos_token_id=ids["bos"], decoder_start_token_id=ids["eos"], activation_function="gelu", **shape)


def make_tiny_seq2seq(folder: Path, kind: str, seed: int = 0) -> Path:
    """A 2+2-layer encoder-decoder of family ``kind`` (marian, t5, bart), d_model 32, saved like a hub model."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    if kind not in KINDS:
        raise ValueError(f"unknown tiny seq2seq kind {kind!r}; choose from {', '.join(KINDS)}")
    folder.mkdir(parents=True, exist_ok=True)
    ids = _save_tokenizer(folder, kind)
    config = _config(kind, ids)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.save_pretrained(folder)
    generation = GenerationConfig.from_model_config(config)
    if kind == "marian":
        # Real opus-mt checkpoints forbid generating the pad token (which is also the decoder start).
        generation.bad_words_ids = [[ids["pad"]]]
    generation.save_pretrained(folder)
    return folder
