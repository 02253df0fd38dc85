"""Benchmarks (speed goals live here, never in tests). Run e.g. `python -m bench.env`. Each writes its result
with `storage.files.write_json`: an interrupted write leaves the last complete result in place."""
