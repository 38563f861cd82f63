"""Reading input text line by line exactly: a line ends at "\n" and nowhere else."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from seq2seq.data import DataError, EncodingError, read_lines
from seq2seq.data import decode_lines as data_lines


class InputError(ValueError):
    """Unusable input; the message names the file (and line)."""


def decode_lines(data: bytes, name: str, replace_invalid: bool = False, first_line: int = 1) -> list[str]:
    """seq2seq.data.decode_lines, its error pointing at the flag that works around it."""
    with _input_errors():
        return data_lines(data, name, replace_invalid, first_line)


def read_input(path: str, stdin: BinaryIO, replace_invalid: bool = False) -> list[str]:
    """Lines of a file (gzipped where its name ends in .gz, read by seq2seq.data), or of stdin for "-"."""
    if path == "-":
        return decode_lines(stdin.read(), "<stdin>", replace_invalid)
    with _input_errors():
        return read_lines(Path(path), replace_invalid)


@contextmanager
def _input_errors():
    """seq2seq.data's errors as InputError; an undecodable line's names --replace-invalid."""
    try:
        yield
    except EncodingError as err:
        raise InputError(f"{err}; --replace-invalid translates it with U+FFFD in place of the bad bytes") from None
    except DataError as err:
        raise InputError(str(err)) from None


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
