"""Reading input text line by line exactly: a line ends at "\n" and nowhere else."""
from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from seq2seq.data import DataError
from seq2seq.data import decode_lines as data_lines


class InputError(ValueError):
    """Unusable input; the message names the file (and line)."""


def decode_lines(data: bytes, name: str, replace_invalid: bool = False, first_line: int = 1) -> list[str]:
    """seq2seq.data.decode_lines, its error pointing at the flag that works around it."""
    try:
        return data_lines(data, name, replace_invalid, first_line)
    except DataError as err:
        raise InputError(f"{err}; --replace-invalid translates it with U+FFFD in place of the bad bytes") from None


def read_input(path: str, stdin: BinaryIO, replace_invalid: bool = False) -> list[str]:
    """Lines of a file (gzipped where its name ends in .gz), or of stdin for "-"."""
    if path == "-":
        return decode_lines(stdin.read(), "<stdin>", replace_invalid)
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a text file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    if p.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise InputError(f"{path}: not a readable gzip file ({err})") from None
    return decode_lines(data, path, replace_invalid)


def write_atomic(path: str, lines: list[str]) -> None:
    """Write lines to path through a temporary file: an existing file is replaced whole or not at all."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{path}: is a directory, expected an output file")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
