"""Prepared training data (train.prepare, seq2seq.prepared): the same pairs, vocabulary and
batches as encoding the split in memory; reused, rebuilt when damaged, never trusted half-written."""
import os

import pytest
import torch

from seq2seq.batching import batch_plan
from seq2seq.data import DataConfig, clean_indices, load_split
from seq2seq.prepared import PreparedError, open_prepared
from seq2seq.tokenizer import Vocabularies, VocabConfig
from train import prepare
from train.data import Encoded, encode, make_batch
from train.prepare import ensure_prepared, prepare_key

EOS = 2
VOCAB = VocabConfig(size=400)


def quiet(_message):
    pass


def test_prepared_pairs_vocabulary_and_batches_equal_the_in_memory_path(tmp_path, multi30k_slice):
    data = DataConfig(path=str(multi30k_slice), prepared=str(tmp_path), max_len=20, max_ratio=1.5)
    prepared = ensure_prepared(data, VOCAB, EOS, quiet)
    raw = load_split(data, "train")
    vocab = Vocabularies.train(raw.src, raw.tgt, VOCAB)  # the whole split: it is smaller than the sample
    assert prepared.vocab.to_dict() == vocab.to_dict()
    enc = encode(vocab, raw, EOS)
    keep, dropped = clean_indices([len(s) - 1 for s in enc.src], [len(t) - 1 for t in enc.tgt], 20, 1.5)
    assert 0 < len(keep) < len(raw) and prepared.meta["dropped"] == dropped and len(prepared) == len(keep)
    memory = Encoded([enc.src[i] for i in keep], [enc.tgt[i] for i in keep])
    for side, seqs in ((prepared.src, memory.src), (prepared.tgt, memory.tgt)):
        assert side.lengths.tolist() == [len(s) for s in seqs]
    want_plan = batch_plan(*(s.lengths for s in memory.sides), 300, seed=4, epoch=1)
    assert batch_plan(prepared.src.lengths, prepared.tgt.lengths, 300, seed=4, epoch=1) == want_plan
    for batch in want_plan:
        for got, want in zip(make_batch(prepared.src, prepared.tgt, batch, 0, 1), make_batch(*memory.sides, batch, 0, 1)):
            assert got.dtype == want.dtype == torch.long and got.equal(want)


def test_the_vocabulary_learns_from_a_seeded_sample_of_the_size_asked(tmp_path, multi30k_slice):
    data = DataConfig(path=str(multi30k_slice), prepared=str(tmp_path))
    small = VocabConfig(size=400, sample=120)
    a = ensure_prepared(data, small, EOS, quiet)
    assert a.meta["vocab_sample"] == 120 and a.meta["read"] == 300
    assert a.vocab.to_dict() != ensure_prepared(data, VOCAB, EOS, quiet).vocab.to_dict()
    again = prepare.build(data, small, EOS, tmp_path / "again", "k", quiet)
    assert open_prepared(again).vocab.to_dict() == a.vocab.to_dict()


def test_a_prepared_set_is_reused_and_keyed_by_data_and_settings(tmp_path, multi30k_slice, monkeypatch):
    data = DataConfig(path=str(multi30k_slice), prepared=str(tmp_path / "p"))
    first = ensure_prepared(data, VOCAB, EOS, quiet)
    monkeypatch.setattr(prepare, "build", lambda *a, **k: pytest.fail("rebuilt a set that was there"))
    assert ensure_prepared(data, VOCAB, EOS, quiet).folder == first.folder
    key = prepare_key(data, VOCAB, EOS)
    assert prepare_key(DataConfig(path=str(multi30k_slice), prepared="elsewhere", valid="x"), VOCAB, EOS) == key
    assert prepare_key(DataConfig(path=str(multi30k_slice), max_len=50), VOCAB, EOS) != key
    assert prepare_key(data, VocabConfig(size=500), EOS) != key
    path = multi30k_slice / "train.de"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    try:
        assert prepare_key(data, VOCAB, EOS) != key
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_set_is_caught_and_prepared_again(tmp_path, multi30k_slice, damage):
    data = DataConfig(path=str(multi30k_slice), prepared=str(tmp_path))
    good = ensure_prepared(data, VOCAB, EOS, quiet)
    ids = good.folder / "tgt.ids"
    original = ids.read_bytes()
    body = bytearray(original)
    if damage == "flip":
        body[len(body) // 2] ^= 0xFF
        ids.write_bytes(bytes(body))
    elif damage == "truncate":
        ids.write_bytes(bytes(body[:-2]))
    else:
        ids.unlink()
    with pytest.raises(PreparedError, match="tgt.ids: (damaged|[0-9]+ bytes|missing)"):
        open_prepared(good.folder)
    said = []
    again = ensure_prepared(data, VOCAB, EOS, said.append)
    assert said[0].startswith("prepared data unusable (") and "preparing it again" in said[0]
    assert again.tgt.lengths.equal(good.tgt.lengths) and (again.folder / "tgt.ids").read_bytes() == original


def test_an_interrupted_preparation_leaves_nothing_a_later_run_trusts(tmp_path, multi30k_slice, monkeypatch):
    from seq2seq.prepared import Writer

    data = DataConfig(path=str(multi30k_slice), prepared=str(tmp_path))
    monkeypatch.setattr(prepare, "CHUNK_PAIRS", 50)
    add = Writer.add
    calls = []

    def add_then_stop(self, src, tgt):
        calls.append(len(src))
        if len(calls) == 3:
            raise KeyboardInterrupt
        add(self, src, tgt)

    monkeypatch.setattr(Writer, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(data, VOCAB, EOS, quiet)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(Writer, "add", add)
    assert len(ensure_prepared(data, VOCAB, EOS, quiet)) > 0


def test_seq2seq_prepare_prints_the_set_and_errors_in_one_line(tmp_path, multi30k_slice, capsys):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    assert prepare.main([str(recipe), f"data.path={multi30k_slice}", f"data.prepared={tmp_path}", "vocab.size=400"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(str(tmp_path)) and "pairs of 300 from" in out
    assert prepare.main([str(recipe), f"data.path={tmp_path / 'gone'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"seq2seq-prepare: error: {recipe}: data.path: ")
