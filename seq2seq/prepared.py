"""A prepared training set on disk: token ids written once, read memory-mapped by every run.

Shapes: P pairs, I ids of one side (every sequence ends with EOS).

A prepared set is a folder:
- `meta.json`: format version, the key it was built for, counts, the ids' dtype, and the size
  and CRC-32 of every other file (written last: a folder without it is not a prepared set);
- `vocab.json`: the vocabularies (seq2seq.tokenizer.Vocabularies.to_dict);
- `{src,tgt}.ids`: each side's ids back to back, uint16 when the vocabulary fits, else int32;
- `{src,tgt}.offsets`: int64 (P + 1,), where each pair's sequence starts, then the end.

Files are read through numpy memory maps, so the processes of one machine share the page cache
instead of holding private copies. Writing goes to a temporary folder that is renamed into
place when complete: an interrupted preparation leaves nothing that a later run trusts.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seq2seq.tokenizer import Vocabularies

VERSION = 1
SIDES = ("src", "tgt")
CRC_BLOCK = 1 << 24  # bytes hashed at a time while checking


class PreparedError(ValueError):
    """A prepared set that cannot be used; the message names the folder and the reason."""


def flatten(seqs: list[list[int]], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Id sequences -> (their ids back to back, their lengths as int64)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return np.fromiter((i for s in seqs for i in s), dtype=dtype, count=int(lengths.sum())), lengths


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class Writer:
    """Writer(folder, key, vocab).add(src_ids, tgt_ids) per chunk; close(extra) -> the folder.

    Writes into a temporary folder beside `folder` and renames it into place on close; abort()
    (or leaving without close) removes it."""

    def __init__(self, folder: Path, key: str, vocab: Vocabularies):
        self.folder, self.key, self.vocab = Path(folder), key, vocab
        self.dtype = ids_dtype(max(vocab.src.vocab_size, vocab.tgt.vocab_size))
        self.tmp = self.folder.with_name(f".{self.folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.files = {side: open(self.tmp / f"{side}.ids", "wb") for side in SIDES}
        self.crc = {side: 0 for side in SIDES}
        self.lengths: dict[str, list[np.ndarray]] = {side: [] for side in SIDES}

    def add(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        """Append a chunk of pairs: each side's id sequences (EOS included)."""
        for side, seqs in zip(SIDES, (src, tgt)):
            flat, lengths = flatten(seqs, self.dtype)
            data = flat.tobytes()
            self.files[side].write(data)
            self.crc[side] = zlib.crc32(data, self.crc[side])
            self.lengths[side].append(lengths)

    def close(self, extra: dict) -> Path:
        """Finish the files, write vocab.json and meta.json (with `extra`), and move the folder
        into place; -> the folder. Another process that got there first wins: ours goes."""
        files = {}
        for side in SIDES:
            self.files[side].close()
            lengths = np.concatenate(self.lengths[side]) if self.lengths[side] else np.zeros(0, np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            data = offsets.tobytes()
            (self.tmp / f"{side}.offsets").write_bytes(data)
            files[f"{side}.ids"] = {"bytes": (self.tmp / f"{side}.ids").stat().st_size, "crc32": self.crc[side]}
            files[f"{side}.offsets"] = {"bytes": len(data), "crc32": zlib.crc32(data)}
        vocab = json.dumps(self.vocab.to_dict()).encode()
        (self.tmp / "vocab.json").write_bytes(vocab)
        files["vocab.json"] = {"bytes": len(vocab), "crc32": zlib.crc32(vocab)}
        meta = {"version": VERSION, "key": self.key, "dtype": self.dtype.name, "pairs": len(offsets) - 1,
                "files": files, **extra}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for path in self.tmp.iterdir():  # on disk before the rename makes the folder visible
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(self.tmp, self.folder)
        except OSError:
            if not (self.folder / "meta.json").exists():
                raise
            self.abort()
        return self.folder

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Side:
    """One side's ids, memory-mapped: lengths (P,) and starts (P,) as tensors; rows gathered by pad."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        self.ids = ids
        offsets = torch.from_numpy(np.array(offsets))  # (P + 1,): small enough to copy
        self.starts, self.lengths = offsets[:-1], offsets[1:] - offsets[:-1]

    @classmethod
    def from_lists(cls, seqs: list[list[int]]) -> "Side":
        ids, lengths = flatten(seqs, np.int64)
        return cls(ids, np.concatenate([[0], np.cumsum(lengths)]))

    def pad(self, rows: torch.Tensor, pad_id: int, prefix: int | None = None, drop_last: bool = False) -> torch.Tensor:
        """(B, W) long ids of these rows, right-padded; with prefix, that id first; with drop_last,
        each row's last id (EOS) left out. W is the longest row's resulting length. One gather
        from the ids: no Python loop over rows (a 16k-token batch would take ~30 ms that way)."""
        lengths = self.lengths[rows] - int(drop_last)
        shift = int(prefix is not None)
        width = int(lengths.max()) + shift
        pos = torch.arange(width) - shift  # position within the stored row
        valid = (pos >= 0) & (pos < lengths[:, None])
        where = (self.starts[rows, None] + pos).clamp_(0, max(len(self.ids) - 1, 0))
        out = torch.where(valid, torch.from_numpy(self.ids[where.numpy()].astype(np.int64)), pad_id)
        if prefix is not None:
            out[:, 0] = prefix
        return out


@dataclass
class Prepared:
    """An opened prepared set: its folder, meta, vocabularies and both sides."""

    folder: Path
    meta: dict
    vocab: Vocabularies
    src: Side
    tgt: Side

    def __len__(self) -> int:
        return int(self.meta["pairs"])


def open_prepared(folder: Path, key: str | None = None, check: bool = True) -> Prepared:
    """Open a prepared set, checking (with check) every file's size and CRC-32 against
    meta.json, and with key, that it was built for that key; PreparedError says what is wrong."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        raise PreparedError(f"{folder}: not a prepared set (no meta.json)") from None
    except (OSError, ValueError) as err:
        raise PreparedError(f"{folder}/meta.json: unreadable ({err})") from None
    if meta.get("version") != VERSION:
        raise PreparedError(f"{folder}: prepared by format version {meta.get('version')}, this code reads {VERSION}")
    if key is not None and meta.get("key") != key:
        raise PreparedError(f"{folder}: prepared for other data or settings (key {meta.get('key')}, expected {key})")
    for name, want in meta["files"].items():
        path = folder / name
        size = path.stat().st_size if path.exists() else None
        if size != want["bytes"]:
            raise PreparedError(f"{path}: {size} bytes, meta.json says {want['bytes']}" if size is not None
                                else f"{path}: missing")
        if check and _crc32(path) != want["crc32"]:
            raise PreparedError(f"{path}: damaged (CRC-32 differs from meta.json)")
    vocab = Vocabularies.from_dict(json.loads((folder / "vocab.json").read_text()))
    sides = []
    for side in SIDES:
        dtype = np.dtype(meta["dtype"])
        ids = (np.memmap(folder / f"{side}.ids", dtype=dtype, mode="r") if meta["files"][f"{side}.ids"]["bytes"]
               else np.zeros(0, dtype))  # an empty file cannot be mapped
        offsets = np.memmap(folder / f"{side}.offsets", dtype=np.int64, mode="r")
        if len(offsets) != meta["pairs"] + 1 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 1):
            raise PreparedError(f"{folder}/{side}.offsets: inconsistent with {side}.ids")
        sides.append(Side(ids, offsets))
    return Prepared(folder, meta, vocab, *sides)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc
