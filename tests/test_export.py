"""Exports. HF Marian: transformers loads it, computes our logits, and its greedy and beam
generate return our token ids; models Marian cannot express are refused with the reason.
CTranslate2: every model, pre-norm included, decodes greedy and beam like us."""
import pytest
import torch

from infer.engine import beam_search, greedy_search
from infer.cli import export_main
from infer.search import SearchConfig
from seq2seq.checkpoint import inference_state, save_atomic
from seq2seq.marian import ExportError, export_marian, exported_id
from seq2seq.tokenizer import Tokenizer, Vocabularies
from tests.conftest import EOS, PAD, pad_batch, random_sentences, tiny_model, train_tiny

transformers = pytest.importorskip("transformers")


class Renumber:
    """Our token ids -> the export's (where <pad> moves last), for ints, lists and tensors."""

    def __init__(self, cfg):
        self.table = torch.tensor([exported_id(cfg, i) for i in range(cfg.tgt_vocab_size)])

    def __call__(self, ids):
        if isinstance(ids, int):
            return int(self.table[ids])
        if isinstance(ids, list):
            return self.table[torch.tensor(ids, dtype=torch.long)].tolist()
        return self.table[ids]

    def back(self, ids: list[int]) -> list[int]:
        inverse = torch.argsort(self.table)
        return inverse[torch.tensor(ids, dtype=torch.long)].tolist()


def export(model, tmp_path, vocab=None):
    cfg = model.config
    if vocab is None:
        src = Tokenizer.placeholder(cfg.src_vocab_size)
        vocab = Vocabularies(src, src if cfg.share_embeddings else Tokenizer.placeholder(cfg.tgt_vocab_size))
    save_atomic(inference_state(model, vocab), tmp_path / "model.pt")
    out = export_marian(tmp_path / "model.pt", tmp_path / "hf")
    return transformers.MarianMTModel.from_pretrained(out).eval()


@pytest.mark.parametrize("variant", [
    dict(share_embeddings=True, activation="relu"),
    dict(src_vocab_size=30, tgt_vocab_size=26, activation="gelu", tie_output=False),
])
def test_exported_model_computes_our_logits(tmp_path, variant):
    model = tiny_model(seed=1, **variant)
    hf = export(model, tmp_path)
    src = pad_batch(random_sentences(3, 2, 9, 24, seed=1))  # right-padded, different lengths
    tgt_in = pad_batch([[1] + s[:-1] for s in random_sentences(3, 2, 7, 24, seed=2)])
    cfg = model.config
    ids = Renumber(cfg)
    start = torch.full((3, 1), ids(cfg.pad_id))  # Marian's decoder starts from <pad>, ours from <s>
    with torch.no_grad():
        ours = model(src, tgt_in)
        theirs = hf(input_ids=ids(src), attention_mask=src != PAD,
                    decoder_input_ids=torch.cat([start, ids(tgt_in[:, 1:])], 1)).logits
    real = tgt_in != PAD
    kept = [i for i in range(cfg.tgt_vocab_size) if i != cfg.pad_id]  # the pad column is banned anyway
    assert torch.allclose(ours[real][:, kept], theirs[real][:, ids(kept)], atol=1e-5)
    separate = tmp_path / "hf" / "target_tokenizer" / "tokenizer.json"
    assert separate.exists() != model.config.share_embeddings  # a second vocabulary gets its own tokenizer


def _noisy(copy_model):
    """The copy model with its weights perturbed: still ends sentences by EOS, at different steps,
    but no longer so sure of itself that every beam agrees."""
    model = type(copy_model)(copy_model.config)
    model.load_state_dict(copy_model.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _score(model, src_row, seq, penalty=None):
    """Our model's log-prob of seq (ending in EOS) for one source, divided by len(seq) unless penalty."""
    tgt_in = torch.tensor([[model.config.bos_id] + seq[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(model(src_row.unsqueeze(0), tgt_in).float(), -1)[0]
    total = lp.gather(1, torch.tensor(seq).unsqueeze(1)).sum().item()
    return total / (penalty or len(seq))


def _until_eos(ids):
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def test_hf_generate_returns_our_greedy_and_beam_tokens(tmp_path, copy_model):
    model = _noisy(copy_model)
    hf = export(model, tmp_path)
    src = pad_batch(random_sentences(16, 1, 6, 12, seed=7))
    budget = 10
    cfg = dict(max_len_a=0.0, max_len_b=budget, max_len=budget)
    runs = [(dict(num_beams=1), greedy_search(model, src, SearchConfig(beam_size=1, **cfg)))]
    for norm, penalty in (("none", 0.0), ("average", 1.0)):
        for stop, theirs in (("current", "never"), ("early", True)):  # early: both stop at 4 finished
            hyps = beam_search(model, src, SearchConfig(beam_size=4, length_norm=norm, stop=stop, **cfg))
            runs.append((dict(num_beams=4, length_penalty=penalty, early_stopping=theirs), [h[0] for h in hyps]))
    ended = 0
    ids = Renumber(model.config)
    for kwargs, ours in runs:
        with torch.no_grad():
            out = hf.generate(input_ids=ids(src), attention_mask=src != PAD, max_new_tokens=budget + 1, do_sample=False, **kwargs)
        theirs = [_until_eos(ids.back(row.tolist()[1:])) for row in out]  # finished rows are padded (beam: with EOS)
        mine = [h.tokens + [EOS] for h in ours]
        differ = [i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b]
        if kwargs["num_beams"] == 1:
            assert not differ  # greedy: the same tokens, always
        # Beam: the two searches are built alike but not identically (HF's bookkeeping of finished
        # hypotheses and its stopping rule differ from ours), so a rare sentence may part. There,
        # ours must have found the better hypothesis by the model's own score (a tie within float noise allowed).
        assert len(differ) <= 2, kwargs
        for i in differ:
            penalty = 1.0 if kwargs.get("length_penalty") == 0.0 else None
            hf_score, our_score = (_score(model, src[i], seq, penalty) for seq in (theirs[i], mine[i]))
            assert our_score >= hf_score - 1e-4, (kwargs, theirs[i], mine[i], hf_score, our_score)
        ended += sum(len(h.tokens) < budget for h in ours)
    assert ended > 0  # some hypotheses ended by EOS before the budget
    greedy, beam_none, _, beam_average, _ = ([h.tokens for h in ours] for _, ours in runs)
    assert greedy != beam_none and beam_none != beam_average  # the beams matter: the test tells searches apart


@pytest.fixture(scope="module")
def trained_post_norm(tmp_path_factory, multi30k_slice):
    return train_tiny(tmp_path_factory.mktemp("export") / "run", multi30k_slice, "model.norm=post", "model.activation=gelu")


def test_export_cli_writes_what_auto_classes_load_and_translates_like_us(tmp_path, trained_post_norm, multi30k_slice, capsys):
    from infer.translator import Translator

    out = tmp_path / "hf"
    assert export_main([str(trained_post_norm), str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "MarianMTModel"
    translator = Translator.from_checkpoint(trained_post_norm)
    lines = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:8]
    ids = Renumber(translator.model.config)
    for line in lines:  # the tokenizer adds EOS, as our encoder input does
        assert tok(line).input_ids == ids(translator.vocab.src.encode(line) + [EOS])
    budget = 12
    ours = translator.translate(lines, greedy=True, max_len_a=0.0, max_len_b=budget, max_len=budget)
    batch = tok(lines, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=budget + 1)
    assert tok.batch_decode(ids, skip_special_tokens=True) == ours


def test_models_marian_cannot_express_are_refused_with_the_reason(tmp_path, capsys):
    src = Tokenizer.placeholder(24)
    save_atomic(inference_state(tiny_model(norm="pre"), Vocabularies(src, Tokenizer.placeholder(24))), tmp_path / "pre.pt")
    with pytest.raises(ExportError, match="norm='pre'"):
        export_marian(tmp_path / "pre.pt", tmp_path / "out")
    assert export_main([str(tmp_path / "pre.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seq2seq-export: error:" in err and "norm='pre'" in err and "pre.pt" in err
    assert not (tmp_path / "out").exists()


def test_ctranslate2_conversion_of_the_export_decodes_greedy_like_us(tmp_path, copy_model):
    """The Marian export converted by CTranslate2's transformers converter (bench/translate_cpu.py's
    route) decodes greedy like us. CTranslate2 starts the decoder from a zero vector and reads our position table, so this also
    checks the start-token fold."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    model = _noisy(copy_model)
    export(model, tmp_path)  # writes tmp_path / "hf"
    ct2 = ctranslate2.Translator(TransformersConverter(str(tmp_path / "hf")).convert(str(tmp_path / "ct2")), device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    src = pad_batch(random_sentences(32, 1, 6, 12, seed=7))
    budget = 10  # CTranslate2 stops at the limit without EOS; ours emits EOS after `budget` tokens
    ours = greedy_search(model, src, SearchConfig(beam_size=1, max_len_a=0.0, max_len_b=budget, max_len=budget))
    ids = Renumber(model.config)
    sources = [tok.convert_ids_to_tokens(ids([t for t in row if t != PAD])) for row in src.tolist()]
    results = ct2.translate_batch(sources, beam_size=1, max_decoding_length=budget)
    assert [ids.back(tok.convert_tokens_to_ids(r.hypotheses[0])) for r in results] == [h.tokens for h in ours]
    assert len({len(h.tokens) for h in ours}) > 1  # sentences end by EOS at different steps


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_ctranslate2_export_decodes_like_us_greedy_and_beam(tmp_path, copy_model, copy_model_pre_norm, norm):
    """seq2seq-export --format ctranslate2, pre-norm included: CTranslate2's greedy and beam tokens
    are ours, raw log-probs with its early exit against our stop "current", and its default
    against ours averaged under stop "early" (done once beam_size are finished). Where a hypothesis reaches the length limit the two
    count it differently (CTranslate2 stops without EOS, ours ends with a forced EOS), so the beam
    comparison gives both room to end by EOS first and compares the sentences that do."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from seq2seq.ctranslate2_export import export_ctranslate2

    model = _noisy(copy_model if norm == "post" else copy_model_pre_norm)
    tok = Tokenizer.placeholder(model.config.src_vocab_size)
    save_atomic(inference_state(model, Vocabularies(tok, tok)), tmp_path / "model.pt")
    assert export_main([str(tmp_path / "model.pt"), str(tmp_path / "ct2"), "--format", "ctranslate2"]) == 0
    ct2 = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    src = pad_batch(random_sentences(32, 1, 6, 12, seed=7))
    sources = [[tok.hf.id_to_token(t) for t in row if t != PAD] for row in src.tolist()]

    def theirs(**kwargs):
        return ct2.translate_batch(sources, **kwargs)

    budget = 10
    greedy = greedy_search(model, src, SearchConfig(beam_size=1, max_len_a=0.0, max_len_b=budget, max_len=budget))
    got = theirs(beam_size=1, max_decoding_length=budget)
    assert [[tok.hf.token_to_id(p) for p in r.hypotheses[0]] for r in got] == [h.tokens for h in greedy]
    assert len({len(h.tokens) for h in greedy}) > 1  # sentences end by EOS at different steps

    long = 40
    ours = [h[0].tokens for h in beam_search(model, src, SearchConfig(beam_size=4, length_norm="none", max_len_a=0.0,
                                                                      max_len_b=long, max_len=long, stop="current"))]
    got = [[tok.hf.token_to_id(p) for p in r.hypotheses[0]]
           for r in theirs(beam_size=4, length_penalty=0.0, max_decoding_length=long + 1, min_decoding_length=0)]
    ended = [i for i in range(len(src)) if max(len(ours[i]), len(got[i])) < long]
    assert len(ended) >= 28 and [got[i] for i in ended] == [ours[i] for i in ended]
    ours = [h[0].tokens for h in beam_search(model, src, SearchConfig(beam_size=4, max_len_a=0.0, max_len_b=long,
                                                                      max_len=long, stop="early"))]
    got = [[tok.hf.token_to_id(p) for p in r.hypotheses[0]]
           for r in theirs(beam_size=4, length_penalty=1.0, max_decoding_length=long + 1, min_decoding_length=0)]
    ended = [i for i in range(len(src)) if max(len(ours[i]), len(got[i])) < long]
    assert len(ended) >= 28 and [got[i] for i in ended] == [ours[i] for i in ended]  # its default: ours averaged, early
    export_ctranslate2(tmp_path / "model.pt", tmp_path / "int8", quantization="int8")
    assert ctranslate2.Translator(str(tmp_path / "int8"), device="cpu").translate_batch(sources[:2], beam_size=1)
