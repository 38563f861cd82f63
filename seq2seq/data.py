"""Parallel corpora: reading (plain text pairs, TSV, JSONL, Hugging Face datasets) and cleaning.

Errors are DataError with one line naming the file and line. Plain text and TSV are read here
so that a line is exactly one newline-terminated line (datasets' text reader also splits at
Unicode line separators, which would misalign parallel files); JSONL and hub datasets go
through `datasets`.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("text", "tsv", "jsonl", "hf")


class DataError(ValueError):
    """Unusable input data; the message names the file (and line)."""


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
    lines = []
    for number, line in enumerate(raw, first_line):
        line = line[:-1] if line.endswith(b"\r") else line
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            if not replace_invalid:
                raise DataError(f"{name}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
            lines.append(line.decode("utf-8", errors="replace"))
    return lines


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (optionally .gz); errors name the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except (OSError, EOFError) as err:  # a truncated or corrupt .gz
        raise DataError(f"{path}: cannot read: {err}") from None
    return decode_lines(data, str(path))


def _text_file(folder: Path, split: str, lang: str) -> Path:
    """{split}.{lang}, or {split}.{lang}.gz when only that exists."""
    plain, zipped = folder / f"{split}.{lang}", folder / f"{split}.{lang}.gz"
    return zipped if zipped.exists() and not plain.exists() else plain


def load_split(cfg: DataConfig, split: str) -> Parallel:
    """Read one split of the corpus described by cfg."""
    if cfg.format == "hf":
        return _load_hub(cfg, split)
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
        src, tgt = read_lines(src_path), read_lines(tgt_path)
        if len(src) != len(tgt):
            raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
        return Parallel(src, tgt, f"{folder / split}.{{{cfg.src_lang},{cfg.tgt_lang}}}")
    if cfg.format == "tsv":
        return _read_tsv(folder / f"{split}.tsv")
    return _read_jsonl(folder / f"{split}.jsonl", cfg)


def _expected(cfg: DataConfig, split: str) -> str:
    if cfg.format == "text":
        return f"{split}.{cfg.src_lang} and {split}.{cfg.tgt_lang}, or with .gz"
    return f"{split}.{cfg.format}"


def _read_tsv(path: Path) -> Parallel:
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}")
        src.append(fields[0])
        tgt.append(fields[1])
    return Parallel(src, tgt, str(path))


def _pair_from_record(record: dict, cfg: DataConfig) -> tuple[str, str] | None:
    """Fields `{src_lang}`/`{tgt_lang}`, or nested under `translation` (Hugging Face style)."""
    # datasets gives every record every column seen in the file: absent ones are None.
    fields = (record.get("translation") or record) if isinstance(record, dict) else None
    if not isinstance(fields, dict):
        return None
    src, tgt = fields.get(cfg.src_lang), fields.get(cfg.tgt_lang)
    return (src, tgt) if isinstance(src, str) and isinstance(tgt, str) else None


def _read_jsonl(path: Path, cfg: DataConfig) -> Parallel:
    import datasets  # deferred: slow to import, and only these formats need it

    datasets.disable_progress_bars()
    read_lines(path)  # clear errors for a missing file or bad UTF-8 before datasets sees it
    try:
        table = datasets.Dataset.from_json(str(path), keep_in_memory=True)
    except Exception:  # datasets names neither line nor cause: find the bad line ourselves
        for number, line in enumerate(read_lines(path), 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        raise DataError(f"{path}: not a JSON-lines file with one object per line") from None
    return _from_records(table, cfg, str(path))


def _load_hub(cfg: DataConfig, split: str) -> Parallel:
    import datasets

    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(cfg.path, cfg.hf_config or None, split=split)
    except Exception as err:  # network, unknown name or split: say which
        raise DataError(f"dataset {cfg.path!r} split {split!r}: {str(err).splitlines()[0]}") from None
    return _from_records(table, cfg, f"{cfg.path}[{split}]")


def _from_records(table, cfg: DataConfig, name: str) -> Parallel:
    src, tgt = [], []
    for number, record in enumerate(table, 1):
        pair = _pair_from_record(record, cfg)
        if pair is None:
            raise DataError(f"{name}:{number}: no string fields {cfg.src_lang!r} and {cfg.tgt_lang!r}")
        src.append(pair[0])
        tgt.append(pair[1])
    return Parallel(src, tgt, name)


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
