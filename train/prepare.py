"""Preparing a training split once: vocabulary, encoding and filters, written for memory maps.

ensure_prepared(data, vocab, eos_id) returns the prepared set for these settings, building it
when there is none, or when the one there is damaged. A set is keyed by the data settings (and
the size and modification time of each local file), the vocabulary settings and the EOS id: a
change to any builds a new one, and every later run and resume with the same settings reuses
it. Building streams the split twice: once to draw the vocabulary's sample (a uniform reservoir
sample of vocab.sample pairs, the whole split in order when it is smaller), once to encode it
in chunks (the tokenizers library spreads each chunk over the cores) and drop what the filters
drop. Processes that want the same set wait on a file lock, not on a collective, so nothing
heavy happens while other ranks of a distributed run wait at a barrier.

    seq2seq-prepare configs/wmt14_en_de_base.yaml [key=value ...]
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from seq2seq.data import CHUNK, DataConfig, DataError, clean_indices, split_files, stream_split
from seq2seq.prepared import VERSION, Prepared, PreparedError, Writer, open_prepared
from seq2seq.tokenizer import Vocabularies, VocabConfig

LOG_EVERY = 1_000_000  # pairs between progress lines while encoding
CHUNK_PAIRS = CHUNK  # pairs encoded and written at a time


def prepared_root(data: DataConfig) -> Path:
    if data.prepared:
        return Path(data.prepared)
    cache = os.environ.get("SEQ2SEQ_CACHE_DIR") or Path.home() / ".cache" / "seq2seq"
    return Path(cache) / "prepared"


def prepare_key(data: DataConfig, vocab: VocabConfig, eos_id: int) -> str:
    """A short hash of everything the prepared training split depends on."""
    settings = dataclasses.asdict(data)
    for unused in ("valid", "test", "prepared"):
        settings.pop(unused)
    if data.format != "hf":
        settings["path"] = str(Path(data.path).resolve())
    files = []
    for path in split_files(data, data.train):
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"version": VERSION, "data": settings, "files": files, "vocab": dataclasses.asdict(vocab),
                       "eos_id": eos_id}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_prepared(data: DataConfig, vocab: VocabConfig, eos_id: int,
                    log: Callable[[str], None] = print) -> Prepared:
    """The prepared training split for these settings, built if missing or damaged."""
    stream_split(data, data.train)  # a missing folder or file is named now, before any lock
    key = prepare_key(data, vocab, eos_id)
    folder = prepared_root(data) / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder.with_name(f".{key}.lock")):
        if (folder / "meta.json").exists():
            try:
                return open_prepared(folder, key)
            except PreparedError as err:
                log(f"prepared data unusable ({err}): preparing it again")
                _remove(folder)
        elif folder.exists():  # no meta.json: not one of ours, or from a version that left it
            _remove(folder)
        build(data, vocab, eos_id, folder, key, log)
        return open_prepared(folder, key, check=False)  # just written and checked as it was written


def build(data: DataConfig, vocab_cfg: VocabConfig, eos_id: int, folder: Path, key: str,
          log: Callable[[str], None] = print) -> Path:
    """Prepare the training split into `folder` (see the module docstring)."""
    start = time.perf_counter()
    name, chunks = stream_split(data, data.train, CHUNK_PAIRS)
    log(f"preparing {name} in {folder}")
    src_sample, tgt_sample, seen = _sample(chunks, vocab_cfg.sample)
    log(f"vocabulary: learning {vocab_cfg.size} pieces from {len(src_sample):,} of {seen:,} pairs")
    vocab = Vocabularies.train(src_sample, tgt_sample, vocab_cfg)
    del src_sample, tgt_sample
    writer = Writer(folder, key, vocab)
    dropped = {"empty": 0, "too_long": 0, "ratio": 0}
    done, kept, next_log = 0, 0, LOG_EVERY
    try:
        for src, tgt in stream_split(data, data.train, CHUNK_PAIRS)[1]:
            src_ids, tgt_ids = vocab.src.encode_batch(src), vocab.tgt.encode_batch(tgt)
            keep, gone = clean_indices([len(s) for s in src_ids], [len(t) for t in tgt_ids], data.max_len, data.max_ratio)
            writer.add([src_ids[i] + [eos_id] for i in keep], [tgt_ids[i] + [eos_id] for i in keep])
            dropped = {k: dropped[k] + gone[k] for k in dropped}
            done, kept = done + len(src), kept + len(keep)
            if done >= next_log:
                log(f"encoded {done:,} of {seen:,} pairs ({done / (time.perf_counter() - start):,.0f} pairs/s overall)")
                next_log += LOG_EVERY
        if done != seen:
            raise DataError(f"{name}: changed while being prepared ({seen:,} pairs, then {done:,})")
        writer.close({"name": name, "read": done, "dropped": dropped, "vocab_sample": min(seen, vocab_cfg.sample or seen)})
    except BaseException:
        writer.abort()
        raise
    log(f"prepared {kept:,} of {done:,} pairs in {time.perf_counter() - start:.0f} s: {folder}")
    return folder


def _sample(chunks, size: int) -> tuple[list[str], list[str], int]:
    """A uniform sample of `size` pairs (all when 0 or the split is smaller), in corpus order, and
    how many pairs there were (Vitter's algorithm R, seeded: the same split gives the same sample)."""
    rng = random.Random(0)
    picked: list[tuple[int, str, str]] = []
    seen = 0
    for src, tgt in chunks:
        for s, t in zip(src, tgt):
            if not size or seen < size:
                picked.append((seen, s, t))
            else:
                j = rng.randrange(seen + 1)
                if j < size:
                    picked[j] = (seen, s, t)
            seen += 1
    picked.sort(key=lambda p: p[0])
    return [p[1] for p in picked], [p[2] for p in picked], seen


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on `path` across processes (where fcntl exists: POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one process at a time is the user's to keep
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(folder: Path) -> None:
    """Move a folder aside, then delete it: a reader never sees half of it."""
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from infer.cli import OneLineParser
    from seq2seq.config import ConfigError
    from train.config import in_recipe, load_config

    parser = OneLineParser(prog="seq2seq-prepare", description="Prepare a recipe's training split once, for every run.",
                           epilog="seq2seq-train prepares what it needs itself; this runs that step alone.")
    parser.add_argument("config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        prepared = ensure_prepared(cfg.data, cfg.vocab, cfg.model.eos_id, log=lambda m: print(m, file=sys.stderr))
    except (ConfigError, DataError, PreparedError, OSError) as err:
        print(f"seq2seq-prepare: error: {in_recipe(args.config, err)}", file=sys.stderr)
        return 2
    meta = prepared.meta
    print(f"{prepared.folder}: {meta['pairs']:,} pairs of {meta['read']:,} from {meta['name']}, dropped {meta['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
