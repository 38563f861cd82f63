"""Shared tiny, seeded models and batches. Everything runs on CPU in fp32."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from seq2seq import ModelConfig, Transformer

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 4  # ids below are pad/bos/eos/unk

def tiny_config(**overrides) -> ModelConfig:
    base = dict(
        src_vocab_size=24, tgt_vocab_size=24, d_model=32, n_heads=4, n_encoder_layers=2,
        n_decoder_layers=2, d_ff=64, dropout=0.0, max_positions=64,
    )
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides)).eval()


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])


def random_sentences(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(FIRST_SYMBOL, vocab, (l,), generator=g).tolist() + [EOS] for l in lengths]


def train_copy_model(**overrides) -> Transformer:
    """A tiny model trained for a few seconds to copy its source: it emits EOS by itself,
    so sentences of different lengths finish at different steps."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(src_vocab_size=12, tgt_vocab_size=12, share_embeddings=True, **overrides))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        src = pad_batch(random_sentences(64, 1, 6, 12, seed=step))
        tgt_in = torch.cat([torch.full((src.size(0), 1), BOS), src[:, :-1]], dim=1)
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).transpose(1, 2), src, ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def copy_model() -> Transformer:
    """The post-norm copy model (train_copy_model)."""
    return train_copy_model()


@pytest.fixture(scope="session")
def copy_model_pre_norm() -> Transformer:
    """Its pre-norm twin, with GELU."""
    return train_copy_model(norm="pre", activation="gelu")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def write_slice(folder: Path, sizes=None) -> Path:
    """The first lines of Multi30k de/en splits as plain text files in folder."""
    sizes = sizes or {"train": 300, "val": 20, "test_2016_flickr": 20}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        for lang in ("de", "en"):
            with gzip.open(SHARED_DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (folder / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session", autouse=True)
def prepared_cache(tmp_path_factory):
    """Prepared training sets go to a folder of this test session, not the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("seq2seq-cache")
    old = os.environ.get("SEQ2SEQ_CACHE_DIR")
    os.environ["SEQ2SEQ_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("SEQ2SEQ_CACHE_DIR", None)
    else:
        os.environ["SEQ2SEQ_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def multi30k_slice(tmp_path_factory) -> Path:
    return write_slice(tmp_path_factory.mktemp("multi30k"))


def train_tiny(run_dir: Path, data: Path, *overrides: str) -> Path:
    """Train configs/tiny.yaml for 30 updates on a data slice; returns its best.pt."""
    from train.config import load_config
    from train.trainer import Trainer

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [
        f"run_dir={run_dir}", f"data.path={data}", "optim.max_steps=30", "eval.every=30",
        "eval.search.max_len=8", "vocab.size=400", *overrides,
    ])
    Trainer(cfg).train()
    return Path(run_dir) / "checkpoints" / "best.pt"
