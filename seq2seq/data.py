"""Parallel corpora: reading (plain text pairs, TSV, JSONL, Hugging Face datasets) and cleaning.

Every format is read as a stream of chunks (stream_split), so a corpus larger than memory goes
through in pieces; load_split gathers a small split whole. Errors are DataError with one line
naming the file and line. Lines split at "\n" only (datasets' text reader also splits at Unicode
line separators, which would misalign parallel files); hub datasets come through `datasets`.
"""
from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("text", "tsv", "jsonl", "hf")
CHUNK = 100_000  # pairs a stream hands over at a time


class DataError(ValueError):
    """Unusable input data; the message names the file (and line)."""


class EncodingError(DataError):
    """A line that is not UTF-8; the message names the file and line."""


@dataclass(frozen=True)
class DataConfig:
    path: str = "../shared/data/multi30k"  # folder of the split files, or a hub dataset name (format hf)
    format: str = "text"  # text: {split}.{lang}[.gz]; tsv: {split}.tsv; jsonl: {split}.jsonl; hf
    hf_config: str = ""  # format hf: the dataset's config name, e.g. "de-en"
    src_lang: str = "de"
    tgt_lang: str = "en"
    train: str = "train"  # split names
    valid: str = "val"
    test: str = "test_2016_flickr"
    max_len: int = 128  # training pairs with more subword tokens on either side are dropped
    max_ratio: float = 3.0  # ... and pairs whose token counts differ by more than this factor
    prepared: str = ""  # folder of prepared training sets; "": $SEQ2SEQ_CACHE_DIR/prepared, else ~/.cache/seq2seq/prepared

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r}: expected one of {FORMATS}")
        if self.max_len < 1 or self.max_ratio < 1:
            raise ValueError(f"need max_len >= 1 and max_ratio >= 1, got {self.max_len} and {self.max_ratio}")


@dataclass
class Parallel:
    src: list[str]
    tgt: list[str]
    name: str  # where it came from, for messages

    def __len__(self) -> int:
        return len(self.src)


def decode_lines(data: bytes, name: str, replace_invalid: bool = False, first_line: int = 1) -> list[str]:
    """Split bytes into lines at "\n" only (a final newline ends the last line; a missing one
    does not drop it; a trailing "\r" goes) and decode UTF-8. The first undecodable line
    (counted from first_line) is an error naming it, unless replace_invalid."""
    if not data:
        return []
    raw = data.split(b"\n")
    if raw[-1] == b"":
        raw.pop()
    return [decode_line(line, name, number, replace_invalid) for number, line in enumerate(raw, first_line)]


def decode_line(raw: bytes, name: str, number: int, replace_invalid: bool = False) -> str:
    """One line's bytes (its "\n" already gone; a trailing "\r" goes here) as UTF-8; an
    undecodable line is an error naming `name:number`, unless replace_invalid."""
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if not replace_invalid:
            raise EncodingError(f"{name}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
        return raw.decode("utf-8", errors="replace")


def read_lines(path: Path, replace_invalid: bool = False) -> list[str]:
    """Lines of a UTF-8 text file (optionally .gz); errors name the file and line."""
    return list(_lines(path, replace_invalid))


def load_split(cfg: DataConfig, split: str) -> Parallel:
    """Read one split of the corpus described by cfg, whole (validation and test splits)."""
    name, chunks = stream_split(cfg, split, streaming=False)
    src, tgt = [], []
    for s, t in chunks:
        src += s
        tgt += t
    return Parallel(src, tgt, name)


def stream_split(cfg: DataConfig, split: str, chunk: int = CHUNK,
                 streaming: bool = True) -> tuple[str, Iterator[tuple[list[str], list[str]]]]:
    """(name, chunks of up to `chunk` pairs as (sources, targets)) of one split, read as a stream,
    so that a corpus larger than memory goes through in pieces. Files are checked before the
    first chunk; a hub dataset is streamed unless streaming=False (then cached by datasets)."""
    if cfg.format == "hf":
        return f"{cfg.path}[{split}]", _chunks(_hub_pairs(cfg, split, streaming), chunk)
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DataError(f"data.path: {cfg.path}: no such folder (looked for {folder.resolve()}); set data.path=DIR, "
                        f"the folder of the {cfg.format} files ({_expected(cfg, split)})")
    if cfg.format == "text":
        src_path, tgt_path = _text_file(folder, split, cfg.src_lang), _text_file(folder, split, cfg.tgt_lang)
        for path in (src_path, tgt_path):
            if not path.exists():
                raise DataError(f"{path}: no such file, nor {path.name}.gz (data.path={cfg.path}; names come from the "
                                "split keys data.train/valid/test and data.src_lang/tgt_lang)")
        return f"{folder / split}.{{{cfg.src_lang},{cfg.tgt_lang}}}", _chunks(_text_pairs(src_path, tgt_path), chunk)
    path = folder / f"{split}.{cfg.format}"
    _check_file(path)
    pairs = _tsv_pairs(path) if cfg.format == "tsv" else _jsonl_pairs(path, cfg)
    return str(path), _chunks(pairs, chunk)


def split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The local files a split is read from (none for a hub dataset)."""
    if cfg.format == "hf":
        return []
    folder = Path(cfg.path)
    if cfg.format == "text":
        return [_text_file(folder, split, cfg.src_lang), _text_file(folder, split, cfg.tgt_lang)]
    return [folder / f"{split}.{cfg.format}"]


def _text_file(folder: Path, split: str, lang: str) -> Path:
    """{split}.{lang}, or {split}.{lang}.gz when only that exists."""
    plain, zipped = folder / f"{split}.{lang}", folder / f"{split}.{lang}.gz"
    return zipped if zipped.exists() and not plain.exists() else plain


def _expected(cfg: DataConfig, split: str) -> str:
    if cfg.format == "text":
        return f"{split}.{cfg.src_lang} and {split}.{cfg.tgt_lang}, or with .gz"
    return f"{split}.{cfg.format}"


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[tuple[list[str], list[str]]]:
    while block := list(itertools.islice(pairs, size)):
        yield [p[0] for p in block], [p[1] for p in block]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")


def _lines(path: Path, replace_invalid: bool = False) -> Iterator[str]:
    """A UTF-8 file's lines (optionally .gz), read as a stream, split at "\n" only and decoded as
    decode_lines does; errors name the file and line."""
    _check_file(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield decode_line(raw[:-1] if raw.endswith(b"\n") else raw, str(path), number, replace_invalid)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
        raise DataError(f"{path}: not a readable gzip file ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None


def _text_pairs(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    for src, tgt in itertools.zip_longest(_lines(src_path), _lines(tgt_path)):
        if src is None or tgt is None:  # count both, to say by how much they differ
            counts = [sum(1 for _ in _lines(p)) for p in (src_path, tgt_path)]
            raise DataError(f"{src_path} has {counts[0]} lines but {tgt_path} has {counts[1]}")
        yield src, tgt


def _tsv_pairs(path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}")
        yield fields[0], fields[1]


def _jsonl_pairs(path: Path, cfg: DataConfig) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        yield _pair_from_record(record, cfg, f"{path}:{number}")


def _hub_pairs(cfg: DataConfig, split: str, streaming: bool) -> Iterator[tuple[str, str]]:
    import datasets  # deferred: slow to import, and only the hub format needs it

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(cfg.path, cfg.hf_config or None, split=split, streaming=streaming)
    except Exception as err:  # network, unknown name or split: say which
        raise DataError(f"dataset {cfg.path!r} split {split!r}: {str(err).splitlines()[0]}") from None
    for number, record in enumerate(table, 1):
        yield _pair_from_record(record, cfg, f"{cfg.path}[{split}]:{number}")


def _pair_from_record(record, cfg: DataConfig, where: str) -> tuple[str, str]:
    """Fields `{src_lang}`/`{tgt_lang}`, or nested under `translation` (Hugging Face style)."""
    fields = (record.get("translation") or record) if isinstance(record, dict) else None
    pair = (fields.get(cfg.src_lang), fields.get(cfg.tgt_lang)) if isinstance(fields, dict) else (None, None)
    if not (isinstance(pair[0], str) and isinstance(pair[1], str)):
        raise DataError(f"{where}: no string fields {cfg.src_lang!r} and {cfg.tgt_lang!r}")
    return pair


def clean_indices(src_lens: list[int], tgt_lens: list[int], max_len: int, max_ratio: float) -> tuple[list[int], dict]:
    """Indices of training pairs to keep, and how many were dropped for each reason."""
    keep, dropped = [], {"empty": 0, "too_long": 0, "ratio": 0}
    for i, (s, t) in enumerate(zip(src_lens, tgt_lens)):
        if s == 0 or t == 0:
            dropped["empty"] += 1
        elif s > max_len or t > max_len:
            dropped["too_long"] += 1
        elif max(s, t) > max_ratio * min(s, t):
            dropped["ratio"] += 1
        else:
            keep.append(i)
    return keep, dropped
