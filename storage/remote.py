"""A storage root on an object store: `s3://bucket/prefix` (AWS, or any S3-compatible server such as MinIO).

Every process computes in a local cache of the root and the store is what workers share:

  * The cache of `s3://bucket/prefix` is `$APO_CACHE/s3/bucket/prefix` (default `~/.cache/apo`); every path
    the pipeline writes is local, so stages, records and locks work as on a local root.
  * `push(folder)`: a published stage folder's files are uploaded, `manifest.json` last. The manifest is the
    commit marker on the store as on disk: a reader trusts only folders whose manifest is there, and an upload
    cut short (a kill, a lost connection) leaves files without one, which readers ignore and the next push of
    the same stage overwrites. Records (`config.json`, `iteration.json`) are single objects, written whole.
  * `pull_stage(folder)`: a published stage folder the cache lacks is downloaded into a temporary folder
    beside its place and renamed into it (the local rename stays the local commit); a checkpoint is so
    downloaded once per cache (its folder is keyed). `pull_records(folder)` refreshes the records below it.

The endpoint, region and credentials come from the standard AWS settings (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), which s3fs reads. Listing or reading the store is an `OSError` naming the root.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from storage.files import folder_written_atomically, written_atomically

MANIFEST = "manifest.json"
RECORDS = ("config.json", "iteration.json")
SCHEMES = ("s3",)


def is_url(root: str | Path | None) -> bool:
    return isinstance(root, str) and "://" in root


def split_url(url: str) -> tuple[str, str]:
    """("s3", "bucket/prefix") of a root URL; a scheme we do not serve is a one-line ValueError."""
    scheme, _, path = url.partition("://")
    path = path.strip("/")
    if scheme not in SCHEMES or not path:
        raise ValueError(f"storage root {url!r}: expected a local folder or s3://bucket[/prefix]")
    return scheme, path


def cache_dir(url: str) -> Path:
    """The local cache of a root URL: `$APO_CACHE/<scheme>/<bucket>/<prefix>`."""
    scheme, path = split_url(url)
    base = Path(os.environ.get("APO_CACHE") or Path.home() / ".cache" / "apo").expanduser()
    return Path(os.path.abspath(base / scheme / path))


@lru_cache(maxsize=None)
def filesystem(scheme: str):
    """The fsspec filesystem of a scheme (s3fs for s3), one per process."""
    import fsspec

    return fsspec.filesystem(scheme)


class Remote:
    """The object-store side of one storage root URL and its local cache."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.scheme, self.base = split_url(url)
        self.cache = cache_dir(url)
        self.fs = filesystem(self.scheme)

    def key(self, local: Path) -> str:
        """The store's path of a path inside the cache."""
        return f"{self.base}/{Path(os.path.abspath(local)).relative_to(self.cache).as_posix()}"

    def _io(self, action: str, what: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, PermissionError) as e:  # s3fs raises OSError subclasses (FileNotFoundError, ...)
            raise OSError(f"storage root {self.url}: could not {action} {what} ({type(e).__name__}: {e})") from None

    def push(self, folder: Path) -> None:
        """Upload a stage folder, manifest last; a folder without a manifest is not published."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
        if not (folder / MANIFEST).is_file():
            raise ValueError(f"{folder}: not a published stage (no {MANIFEST})")
        for f in files + [folder / MANIFEST]:
            self._io("upload", f, self.fs.put_file, str(f), self.key(f))

    def push_record(self, path: Path) -> None:
        """Upload a record (one object, written whole)."""
        self._io("upload", path, self.fs.put_file, str(path), self.key(path))

    def pull_records(self, prefix: str) -> None:
        """Download every record (`config.json`, `iteration.json`, not those inside a stage folder) under
        `prefix` (relative to the root). Always: records are a few KB, and a replay rewrites one with folder
        keys of the same length, so neither size nor name tells a stale copy."""
        remote = f"{self.base}/{prefix.strip('/')}"
        found = self._io("list", remote, self._find, remote)
        for key in sorted(found):
            rel = key[len(self.base) + 1:]
            name = rel.rsplit("/", 1)[-1]
            if name in RECORDS and not self._inside_stage(rel, found):
                with written_atomically(self.cache / rel) as tmp:
                    self._io("download", key, self.fs.get_file, key, str(tmp))

    def _find(self, remote: str) -> dict:
        self.fs.invalidate_cache(remote)  # s3fs caches listings: another worker may have published since
        return self.fs.find(remote, detail=True) if self.fs.exists(remote) else {}

    def _inside_stage(self, rel: str, found: dict) -> bool:
        """Whether a file lies in a stage folder (its manifest beside it), as a checkpoint's config.json does."""
        folder = rel.rsplit("/", 1)[0]
        parts = folder.split("/")
        return any(f"{self.base}/{'/'.join(parts[:i])}/{MANIFEST}" in found for i in range(1, len(parts) + 1))

    def _pull_folder(self, folder: Path, remote: str) -> Path:
        with folder_written_atomically(folder) as tmp:  # replaces an unpublished leftover in the cache
            self._io("download", remote, self.fs.get, remote + "/", str(tmp) + "/", True)
            if not (tmp / MANIFEST).is_file():
                raise OSError(f"storage root {self.url}: {remote} lost its {MANIFEST} while downloading")
        return folder

    def clean(self, prefix: str) -> list[str]:
        """Remove the store's leftovers of unfinished publishes under `prefix`: files in a stage folder
        (`<stage>/<key>/`) that has no manifest. Returns the folders removed."""
        remote = f"{self.base}/{prefix.strip('/')}"
        found = self._io("list", remote, self._find, remote)
        stage_folders = set()
        for k in found:  # every stage folder a file lies in (its tables, or its checkpoint's files)
            parts = k.split("/")
            stage_folders |= {"/".join(parts[:i]) for i in range(1, len(parts)) if _is_stage_folder("/".join(parts[:i]))}
        removed = []
        for f in sorted(stage_folders):
            if f"{f}/{MANIFEST}" not in found:
                self._io("remove", f, self.fs.rm, f, True)
                removed.append(f)
        return removed


def _is_stage_folder(path: str) -> bool:
    """runs/<run>/<stage>/<key> or runs/<run>/iter=<i>/<stage>/<key>: a 12-hex-digit key after a stage name."""
    parts = path.split("/")
    return len(parts[-1]) == 12 and all(c in "0123456789abcdef" for c in parts[-1]) and "runs" in parts


# --- the roots of this process ----------------------------------------------------------------------------

_ACTIVE: dict[Path, Remote] = {}  # cache folder -> its store, for every URL root this process has used


def local_root(url: str) -> Path:
    """The cache folder of a root URL, remembered so that paths under it publish to and pull from the store."""
    cache = cache_dir(url)
    if cache not in _ACTIVE:
        _ACTIVE[cache] = Remote(url)
    return cache


def remote_for(path: str | Path) -> Remote | None:
    """The store behind a local path, when the path lies in the cache of a URL root this process uses."""
    absolute = Path(os.path.abspath(path))
    for cache, remote in _ACTIVE.items():
        if absolute == cache or cache in absolute.parents:
            return remote
    return None


def push_stage(folder: Path) -> None:
    if remote := remote_for(folder):
        remote.push(folder)


def ensure_pushed(folder: Path) -> None:
    """A stage done in the cache but not on the store (its upload failed: a lost connection, a kill between the
    local rename and the manifest's upload) is uploaded now, when a command next finds it done."""
    remote = remote_for(folder)
    if remote is None:
        return
    manifest = f"{remote.key(folder)}/{MANIFEST}"
    remote.fs.invalidate_cache(manifest)
    if not remote._io("read", manifest, remote.fs.exists, manifest):
        remote.push(Path(folder))


def check_writable(url: str) -> None:
    """One small object written and removed: a missing bucket, wrong credentials or an unreachable endpoint is
    one line before a run starts, not an error after its first stage computed."""
    remote = Remote(url)
    probe = f"{remote.base}/.write-probe-{os.getpid()}"
    try:
        remote.fs.pipe(probe, b"")
        remote.fs.rm(probe)
    except Exception as e:  # s3fs and botocore raise many types (FileNotFoundError, PermissionError, ...)
        raise ValueError(f"storage root {url} is not writable ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
                         "check the bucket and the AWS_* settings") from None


def pull_stage(folder: Path) -> bool:
    """Fetch a published stage folder the cache lacks; whether the store had it."""
    remote = remote_for(folder)
    if remote is None or (Path(folder) / MANIFEST).is_file():
        return False
    key = remote.key(folder)
    remote.fs.invalidate_cache(key)
    if not remote._io("read", f"{key}/{MANIFEST}", remote.fs.exists, f"{key}/{MANIFEST}"):
        return False
    remote._pull_folder(Path(folder), key)
    return True


def remove(path: Path) -> bool:
    """Delete a file or folder of the cache from the store as well (a pruned checkpoint); whether the store had
    it."""
    remote = remote_for(path)
    if remote is None:
        return False
    key = remote.key(Path(path))
    remote.fs.invalidate_cache(key)
    if not remote._io("read", key, remote.fs.exists, key):
        return False
    remote._io("write", key, remote.fs.rm, key, True)
    return True


def push_record(path: Path) -> None:
    if remote := remote_for(path):
        remote.push_record(path)


def pull_records(folder: Path) -> None:
    """Refresh the records (`config.json`, `iteration.json`) under a local folder from the store."""
    if remote := remote_for(folder):
        remote.pull_records(Path(os.path.abspath(folder)).relative_to(remote.cache).as_posix())
