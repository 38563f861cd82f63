"""Corpus reading, cleaning, subword vocabularies and token batching."""
import gzip
import json
import random

import pytest

from seq2seq.batching import batch_plan, pad
from seq2seq.data import DataConfig, DataError, clean_indices, load_split, read_lines, stream_split
from seq2seq.tokenizer import SPECIALS, Vocabularies, VocabConfig
from train.data import Encoded, make_batch


def test_text_pairs_and_gzip_read_alike(tmp_path, multi30k_slice):
    plain = load_split(DataConfig(path=str(multi30k_slice)), "val")
    for lang in ("de", "en"):
        data = (multi30k_slice / f"val.{lang}").read_bytes()
        (tmp_path / f"val.{lang}.gz").write_bytes(gzip.compress(data))
    zipped = load_split(DataConfig(path=str(tmp_path)), "val")
    assert (zipped.src, zipped.tgt) == (plain.src, plain.tgt) and len(plain) == 20


def test_tsv_and_jsonl_read_the_same_pairs(tmp_path, multi30k_slice):
    ref = load_split(DataConfig(path=str(multi30k_slice)), "val")
    (tmp_path / "val.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(ref.src, ref.tgt)), encoding="utf-8")
    records = [{"translation": {"de": s, "en": t}} if i % 2 else {"de": s, "en": t} for i, (s, t) in enumerate(zip(ref.src, ref.tgt))]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for fmt in ("tsv", "jsonl"):
        got = load_split(DataConfig(path=str(tmp_path), format=fmt), "val")
        assert (got.src, got.tgt) == (ref.src, ref.tgt), fmt


@pytest.mark.parametrize("fmt", ["text", "tsv", "jsonl"])
def test_a_stream_gives_the_split_in_chunks(tmp_path, multi30k_slice, fmt):
    ref = load_split(DataConfig(path=str(multi30k_slice)), "val")
    if fmt == "tsv":
        (tmp_path / "val.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(ref.src, ref.tgt)), encoding="utf-8")
    elif fmt == "jsonl":
        (tmp_path / "val.jsonl").write_text("".join(json.dumps({"de": s, "en": t}) + "\n" for s, t in zip(ref.src, ref.tgt)),
                                            encoding="utf-8")
    folder = multi30k_slice if fmt == "text" else tmp_path
    name, chunks = stream_split(DataConfig(path=str(folder), format=fmt), "val", chunk=6)
    chunks = list(chunks)
    assert [len(s) for s, _ in chunks] == [6, 6, 6, 2] and all(len(s) == len(t) for s, t in chunks)
    assert [p for s, t in chunks for p in zip(s, t)] == list(zip(ref.src, ref.tgt))


def test_empty_lines_are_kept_in_place(tmp_path):
    (tmp_path / "x.de").write_text("a\n\nc\n")
    (tmp_path / "x.en").write_text("A\nB\n\n")
    got = load_split(DataConfig(path=str(tmp_path)), "x")
    assert got.src == ["a", "", "c"] and got.tgt == ["A", "B", ""]


def test_unicode_line_separators_do_not_split_lines(tmp_path):
    (tmp_path / "x.de").write_text("one\u2028still one\x85and\n", encoding="utf-8")
    assert read_lines(tmp_path / "x.de") == ["one\u2028still one\x85and"]


def test_bad_utf8_names_file_and_line(tmp_path):
    (tmp_path / "x.de").write_bytes(b"gut\nschlecht \xff\n")
    with pytest.raises(DataError, match=r"x\.de:2: invalid UTF-8"):
        read_lines(tmp_path / "x.de")


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    (tmp_path / "x.de").write_text("a\nb\nc\n")
    (tmp_path / "x.en").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"x\.de has 3 lines but .*x\.en has 2"):
        load_split(DataConfig(path=str(tmp_path)), "x")


@pytest.mark.parametrize(
    "name, content, message",
    [("x.tsv", "a\tb\nonly one field\n", r"x\.tsv:2: expected 2 tab-separated fields"),
     ("x.jsonl", '{"de": "a", "en": "b"}\n{"de": broken\n', r"x\.jsonl:2: invalid JSON"),
     ("x.jsonl", '{"de": "a", "fr": "b"}\n', r"x\.jsonl:1: no string fields 'de' and 'en'")],
)
def test_malformed_records_name_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(path=str(tmp_path), format=name.split(".")[1]), "x")


def test_missing_file_or_folder_is_named_with_the_key_that_sets_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"nothere\.de: no such file, nor nothere\.de\.gz \(data\.path="):
        load_split(DataConfig(path=str(tmp_path)), "nothere")
    with pytest.raises(DataError, match=rf"^data\.path: gone: no such folder \(looked for {tmp_path}/gone\); set data\.path="):
        monkeypatch.chdir(tmp_path)  # a relative data.path is looked for from the current folder
        load_split(DataConfig(path="gone"), "train")


def test_cleaning_counts_each_reason():
    keep, dropped = clean_indices([3, 0, 50, 2, 4], [3, 2, 4, 9, 5], max_len=20, max_ratio=3.0)
    assert keep == [0, 4] and dropped == {"empty": 1, "too_long": 1, "ratio": 1}


@pytest.fixture(scope="module")
def joint_vocab(multi30k_slice):
    train = load_split(DataConfig(path=str(multi30k_slice)), "train")
    return Vocabularies.train(train.src, train.tgt, VocabConfig(size=600)), train


def test_tokenizer_round_trip_is_exact(joint_vocab):
    vocab, train = joint_vocab
    texts = train.src[:50] + train.tgt[:50] + ["Größe Übermaß straße", "  two  spaces\tand a tab ", "emoji 🙂, 中文, “quotes”", ""]
    for text in texts:
        assert vocab.src.decode(vocab.src.encode(text)) == text


def test_special_tokens_have_the_model_default_ids(joint_vocab):
    vocab, _ = joint_vocab
    assert [vocab.src.hf.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert vocab.joint and vocab.src.vocab_size <= 600


def test_vocabularies_survive_serialisation(joint_vocab, multi30k_slice):
    vocab, train = joint_vocab
    again = Vocabularies.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.joint and again.src.encode_batch(train.src[:20]) == vocab.src.encode_batch(train.src[:20])
    separate = Vocabularies.train(train.src, train.tgt, VocabConfig(size=500, joint=False, kind="unigram"))
    assert not separate.joint and separate.src.decode(separate.src.encode("Ein Hund läuft.")) == "Ein Hund läuft."
    restored = Vocabularies.from_dict(separate.to_dict())
    assert restored.tgt.encode("A dog runs.") == separate.tgt.encode("A dog runs.")


def _lengths(n=500, seed=0):
    rng = random.Random(seed)
    src = [rng.randint(1, 40) for _ in range(n)]
    return src, [max(1, s + rng.randint(-5, 5)) for s in src]


def test_batch_plan_holds_every_sentence_once_within_budget():
    src, tgt = _lengths()
    plan = batch_plan(src, tgt, max_tokens=300, seed=3, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(len(src)))
    for b in plan:
        assert len(b) == 1 or len(b) * max(max(src[i], tgt[i]) for i in b) <= 300


def test_batch_plan_is_the_greedy_cut_of_the_length_order():
    """The plan equals the plain greedy algorithm it implements with arrays: sort by (width,
    source length, a seeded tiebreak), add sentences while rows x width fits, shuffle batches."""
    import torch

    def greedy(src, tgt, max_tokens, seed, epoch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        tiebreak = torch.randperm(len(src), generator=g).tolist()
        order = sorted(range(len(src)), key=lambda i: (max(src[i], tgt[i]), src[i], tiebreak[i]))
        batches, current = [], []
        for i in order:
            if current and max(src[i], tgt[i]) * (len(current) + 1) > max_tokens:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]

    rng = random.Random(5)
    src = [rng.randint(1, 40) for _ in range(3000)] + [700]  # one longer than the budget
    tgt = [max(1, s + rng.randint(-5, 5)) for s in src]
    for max_tokens, seed, epoch in [(300, 3, 0), (300, 3, 1), (64, 1, 0), (5000, 2, 7)]:
        assert batch_plan(src, tgt, max_tokens, seed, epoch) == greedy(src, tgt, max_tokens, seed, epoch)


def test_batch_plan_is_deterministic_and_reshuffled_per_epoch():
    src, tgt = _lengths()
    assert batch_plan(src, tgt, 300, seed=3, epoch=0) == batch_plan(src, tgt, 300, seed=3, epoch=0)
    assert batch_plan(src, tgt, 300, seed=3, epoch=0) != batch_plan(src, tgt, 300, seed=3, epoch=1)


def test_length_grouping_wastes_less_padding_than_random_batches():
    src, tgt = _lengths()
    plan = batch_plan(src, tgt, 300, seed=3, epoch=0)

    def padding_fraction(batches):
        padded = sum(len(b) * max(max(src[i], tgt[i]) for i in b) for b in batches)
        return 1 - sum(max(src[i], tgt[i]) for b in batches for i in b) / padded

    sizes = [len(b) for b in plan]
    shuffled, start, random_batches = list(range(len(src))), 0, []
    for size in sizes:
        random_batches.append(shuffled[start : start + size])
        start += size
    assert padding_fraction(plan) < padding_fraction(random_batches) / 3


def test_training_batches_are_the_padded_rows_and_the_shifted_target():
    src, tgt = _lengths(60, seed=5)
    rng = random.Random(1)
    eos, pad_id, bos = 2, 0, 1
    enc = Encoded([[rng.randint(4, 99) for _ in range(n - 1)] + [eos] for n in src],
                  [[rng.randint(4, 99) for _ in range(n - 1)] + [eos] for n in tgt])
    assert min(tgt) == 1  # a row that is only EOS: its decoder input is BOS alone
    for rows in ([0], [3, 1, 4, 1, 5, 9], list(range(60))[::-1]):
        got = make_batch(*enc.sides, rows, pad_id, bos)
        want = (pad([enc.src[i] for i in rows], pad_id), pad([[bos] + enc.tgt[i][:-1] for i in rows], pad_id),
                pad([enc.tgt[i] for i in rows], pad_id))
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.equal(w)


def test_hf_format_goes_through_datasets_load_dataset(tmp_path, multi30k_slice):
    """A local folder stands in for a hub name: load_dataset reads both the same way."""
    ref = load_split(DataConfig(path=str(multi30k_slice)), "val")
    folder = tmp_path / "hub_like"
    folder.mkdir()
    for split in ("train", "validation"):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for s, t in zip(ref.src, ref.tgt):
                f.write(json.dumps({"translation": {"de": s, "en": t}}, ensure_ascii=False) + "\n")
    got = load_split(DataConfig(path=str(folder), format="hf", valid="validation"), "validation")
    assert (got.src, got.tgt) == (ref.src, ref.tgt)
    _, chunks = stream_split(DataConfig(path=str(folder), format="hf"), "validation", chunk=7)  # streamed
    assert [p for s, t in chunks for p in zip(s, t)] == list(zip(ref.src, ref.tgt))
    with pytest.raises(DataError, match="split 'nonexistent'"):
        load_split(DataConfig(path=str(folder), format="hf"), "nonexistent")
