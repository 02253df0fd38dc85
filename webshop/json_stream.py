"""Upstream's JSON files read one record at a time, and the error every data reader raises."""
from __future__ import annotations

import json
from pathlib import Path

CHUNK = 1 << 20  # characters read at a time; a record larger than this just takes more reads
MAX_RECORD = 64 << 20  # a record still not decoded at this size is taken as malformed, not read to the end


class DataError(ValueError):
    """A data file is missing or malformed; the message is one line naming the file and the field."""


def iter_json(path: Path):
    """(key, value) of a top-level JSON object, or (index, value) of a top-level array, one at a time: memory
    holds one value and one read chunk, whatever the file's size."""
    decoder = json.JSONDecoder()
    with Path(path).open(encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def need(n: int = 1) -> None:  # at least n characters past pos, unless the file ends
            nonlocal buf, pos, eof
            while len(buf) - pos < n and not eof:
                more = f.read(CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0

        def skip_space() -> str:
            nonlocal pos
            while True:
                need()
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""

        def value(where: str):
            nonlocal pos
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    # a number may go on in the next chunk ("333" of "333.5"); any other value ends itself
                    number = isinstance(obj, (int, float)) and not isinstance(obj, bool)
                    if eof or (end < len(buf) and not (number and buf[end] in "0123456789.eE+-")):
                        pos = end
                        return obj
                except json.JSONDecodeError as e:
                    if eof or len(buf) - pos > MAX_RECORD:
                        raise DataError(f"{path}: {where} is not valid JSON ({e.msg})") from None
                need(len(buf) - pos + CHUNK)

        opening = skip_space()
        if opening not in ("[", "{"):
            raise DataError(f"{path}: expected a JSON list or object, found {opening or 'nothing'!r}")
        closing, pos, index = "]" if opening == "[" else "}", pos + 1, 0
        while True:
            c = skip_space()
            if c == closing:
                return
            if index and c == ",":
                pos += 1
                skip_space()
            elif index:
                raise DataError(f"{path}: expected ',' or {closing!r} after item {index - 1}, found {c!r}")
            if opening == "{":
                key = value(f"the key of item {index}")
                if skip_space() != ":":
                    raise DataError(f"{path}: expected ':' after key {key!r}")
                pos += 1
                skip_space()
                yield key, value(f"item {index} ({key!r})")
            else:
                yield index, value(f"item {index}")
            index += 1
