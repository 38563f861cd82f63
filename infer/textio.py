"""Reading input text line by line exactly: a line ends at "\n" and nowhere else."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO


class InputError(ValueError):
    """Unusable input; the message names the file (and line)."""


def decode_lines(data: bytes, name: str, replace_invalid: bool = False, first_line: int = 1) -> list[str]:
    """Split bytes into lines (a final newline ends the last line; a missing one does not drop
    it) and decode UTF-8, naming the first undecodable line (counted from first_line) unless
    replace_invalid."""
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
                raise InputError(f"{name}:{number}: invalid UTF-8 ({err.reason} at byte {err.start}); "
                                 "--replace-invalid translates it with U+FFFD in place of the bad bytes") from None
            lines.append(line.decode("utf-8", errors="replace"))
    return lines


def read_input(path: str, stdin: BinaryIO, replace_invalid: bool = False) -> list[str]:
    """Lines of a file, or of stdin for "-"."""
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
