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
    "election minister party vote government policy tax law parliament leader "
    "alice bob carol dave paris london berlin tokyo"
).split()


# A chat template in the style of the hub's (role markers are special tokens, the assistant turn ends
# with the end-of-text token), for the causal-LM fixtures.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '[USR]' if m['role'] == 'user' else '[BOT]' }} {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %} {{ eos_token }}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}[BOT] {% endif %}"
)


def _save_tokenizer(folder: Path, chat: bool = False) -> int:
    """A WordPiece tokenizer over ``WORDS`` with BERT's special tokens (and, with ``chat``, role markers,
    begin/end-of-text tokens and a chat template); returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (["[USR]", "[BOT]"] if chat else [])
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
    if chat:
        fast.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]",
                                 "additional_special_tokens": ["[USR]", "[BOT]"]})
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return len(vocab)


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over ``WORDS``, saved like a hub model."""
    return make_tiny_model(folder, "bert", seed)


def make_tiny_chat_llama(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama whose tokenizer has begin/end-of-text tokens and a chat template."""
    return make_tiny_model(folder, "llama", seed, chat=True)


def make_tiny_model(folder: Path, kind: str, seed: int = 0, chat: bool = False) -> Path:
    """A tiny seeded base model of architecture ``kind`` (bert, roberta, distilbert, llama) plus tokenizer.

    The architectures differ in what the build must get right: token type ids (BERT), offset position
    ids (RoBERTa), no PEFT default targets (DistilBERT), decoder-only with explicit positions (Llama).
    """
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, LlamaConfig, RobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _save_tokenizer(folder, chat)
    # Wider init than the usual 0.02: random features that a tiny adapter can learn from in tests.
    common = {"vocab_size": vocab_size, "pad_token_id": 0, "initializer_range": 0.2}
    configs = {
        "bert": lambda: BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=128, **common),
        "roberta": lambda: RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                                         **common),
        "distilbert": lambda: DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                               max_position_embeddings=128, **common),
        "llama": lambda: LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, **common),
    }
    torch.manual_seed(seed)
    AutoModel.from_config(configs[kind]()).save_pretrained(folder)
    return folder
