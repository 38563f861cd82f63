"""Corpus-level scores with sacrebleu, with the signatures that make them reproducible."""
from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER


def score(hypotheses: list[str], references: list[list[str]], lowercase: bool = False) -> dict:
    """BLEU, chrF and TER of detokenized hypotheses against one or more reference streams."""
    for refs in references:
        if len(refs) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but a reference stream of {len(refs)} lines")
    # TER is case-insensitive unless asked otherwise, as in sacrebleu itself.
    bleu, chrf, ter = BLEU(lowercase=lowercase), CHRF(lowercase=lowercase), TER()
    b, c, t = bleu.corpus_score(hypotheses, references), chrf.corpus_score(hypotheses, references), ter.corpus_score(hypotheses, references)
    return {
        "bleu": round(b.score, 2), "chrf": round(c.score, 2), "ter": round(t.score, 2),
        "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "ter_signature": str(ter.get_signature()),
    }
