"""Corpus-level scores with sacrebleu, with the signatures that make them reproducible."""
from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER


def score(hypotheses: list[str], references: list[list[str]], lowercase: bool = False, with_ter: bool = True) -> dict:
    """BLEU, chrF and (unless with_ter is False) TER of detokenized hypotheses against one or
    more reference streams."""
    for refs in references:
        if len(refs) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but a reference stream of {len(refs)} lines")
    bleu, chrf = BLEU(lowercase=lowercase), CHRF(lowercase=lowercase)
    b, c = bleu.corpus_score(hypotheses, references), chrf.corpus_score(hypotheses, references)
    result = {"bleu": round(b.score, 2), "chrf": round(c.score, 2),
              "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
    if with_ter:  # case-insensitive unless asked otherwise, as in sacrebleu itself
        ter = TER()
        result.update(ter=round(ter.corpus_score(hypotheses, references).score, 2), ter_signature=str(ter.get_signature()))
    return result
