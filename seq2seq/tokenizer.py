"""Subword vocabularies with `tokenizers`: byte-level BPE or unigram, exactly reversible.

Pieces are built over the bytes of the (Unicode-normalised) text, so every string encodes
without an unknown token and decoding gives the normalised text back exactly: sacrebleu can
score detokenized output against raw references.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3, as ModelConfig's pad/bos/eos defaults
KINDS = ("bpe", "unigram")
NORMALIZATIONS = ("nfc", "nfkc", "none")


@dataclass(frozen=True)
class VocabConfig:
    kind: str = "bpe"  # "bpe" or "unigram"
    size: int = 8000  # pieces per vocabulary, special tokens included
    joint: bool = True  # one vocabulary for both languages (allows shared embeddings)
    normalization: str = "nfc"  # Unicode normalisation applied before encoding
    min_frequency: int = 2  # BPE: merges seen fewer times are not learned
    sample: int = 1_000_000  # pairs, drawn uniformly from the training split, the vocabulary learns from; 0: all

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {KINDS}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r}: expected one of {NORMALIZATIONS}")
        if self.sample < 0:
            raise ValueError(f"sample={self.sample} must be 0 (all pairs) or more")
        if self.size < len(SPECIALS) + 256:
            raise ValueError(f"size={self.size} must leave room for 256 byte pieces and the special tokens")


class Tokenizer:
    """Text <-> subword ids. Ids exclude special tokens; callers add BOS/EOS."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf

    @classmethod
    def train(cls, texts: Iterable[str], cfg: VocabConfig) -> "Tokenizer":
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if cfg.kind == "bpe":
            hf = HFTokenizer(models.BPE())
            trainer = trainers.BpeTrainer(
                vocab_size=cfg.size, min_frequency=cfg.min_frequency, special_tokens=list(SPECIALS),
                initial_alphabet=alphabet, show_progress=False,
            )
        else:
            hf = HFTokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=cfg.size, special_tokens=list(SPECIALS), unk_token="<unk>",
                initial_alphabet=alphabet, show_progress=False,
            )
        if cfg.normalization != "none":
            hf.normalizer = normalizers.NFC() if cfg.normalization == "nfc" else normalizers.NFKC()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.train_from_iterator(texts, trainer)
        for i, token in enumerate(SPECIALS):
            if hf.token_to_id(token) != i:
                raise RuntimeError(f"special token {token} got id {hf.token_to_id(token)}, expected {i}")
        return cls(hf)

    @classmethod
    def placeholder(cls, size: int) -> "Tokenizer":
        """Specials plus pieces named t4, t5, ...: a vocabulary for models with random weights
        (benchmarks, tests), which decode ids rather than text."""
        vocab = {token: i for i, token in enumerate(SPECIALS)}
        vocab.update({f"t{i}": i for i in range(len(SPECIALS), size)})
        hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.add_special_tokens(list(SPECIALS))
        return cls(hf)

    @classmethod
    def from_str(cls, json_str: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(json_str))

    def to_str(self) -> str:
        return self.hf.to_str()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return self.hf.decode_batch(batch, skip_special_tokens=True)


@dataclass
class Vocabularies:
    """Source and target tokenizers; one object serves both when the vocabulary is joint."""

    src: Tokenizer
    tgt: Tokenizer

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @classmethod
    def train(cls, src_texts: list[str], tgt_texts: list[str], cfg: VocabConfig) -> "Vocabularies":
        if cfg.joint:
            joint = Tokenizer.train(src_texts + tgt_texts, cfg)
            return cls(joint, joint)
        return cls(Tokenizer.train(src_texts, cfg), Tokenizer.train(tgt_texts, cfg))

    def to_dict(self) -> dict:
        return {"src": self.src.to_str(), "tgt": None if self.joint else self.tgt.to_str()}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabularies":
        src = Tokenizer.from_str(data["src"])
        return cls(src, src if data["tgt"] is None else Tokenizer.from_str(data["tgt"]))
