"""Benchmarks (speed goals live here, never in tests). Run e.g. `python -m bench.env`."""
import json
from pathlib import Path


def write_json(path: str | Path, result: dict) -> Path:
    """A benchmark's result file, written aside and then renamed: an interrupted write leaves the last complete
    result in place, never half of one. Values JSON cannot hold (paths, dates) are written as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
