"""Tiny seeded random Hugging Face models with real tokenizers, built offline in a second.

Host-only (needs torch and transformers); device tests use bundles built from these by the host.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a an of to and in on for with is was are be this that it as at by from or not but "
    "market shares profit bank economy growth sales company price trade "
    "match team goal season player win cup coach league score "
    "film music star award show actor band album festival cinema "
    "phone software computer internet data chip network users app device "
    "election minister party vote government policy tax law parliament leader"
).split()


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over ``WORDS``, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate(specials + list(WORDS))}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                        initializer_range=0.2)  # wider than BERT's 0.02: random features that a tiny adapter can learn from
    BertModel(config).save_pretrained(folder)
    return folder
