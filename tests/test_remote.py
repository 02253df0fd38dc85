"""A storage root on an object store (issue 14): `s3://bucket/prefix` through a real S3 API (moto's server)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import remote
from storage.stages import reuse_done, stage_dir, stage_output

REPO = Path(__file__).resolve().parents[1]


def _bucket(name: str) -> str:
    fs = remote.filesystem("s3")
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}/root"


def _publish_weights(url: str, key: str, rows: list[int]) -> Path:
    folder = stage_dir("r", "weights", key, 1, url)
    with stage_output(folder, {"stage": "weights", "key": key}) as tmp:
        pq.write_table(pa.table({"x": rows}), tmp / "weights.parquet")
    return folder


def test_a_stage_published_by_one_cache_is_read_by_another(s3_server, tmp_path, monkeypatch):
    """Worker A publishes a stage (tables, then the manifest) to the store; worker B, with a cache of its own,
    finds it done and reads the same table; an upload cut short before its manifest counts as not done, and
    `clean` removes it."""
    url = _bucket("share")
    monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))
    a = _publish_weights(url, "0123456789ab", [1, 2, 3])
    fs = remote.filesystem("s3")
    stored = sorted(k.rsplit("/", 1)[1] for k in fs.find("share/root/runs/r/iter=0001/weights/0123456789ab"))
    assert stored == ["manifest.json", "weights.parquet"]

    monkeypatch.setenv("APO_CACHE", str(tmp_path / "b"))
    b = stage_dir("r", "weights", "0123456789ab", 1, url)
    assert b != a and not b.exists()
    assert reuse_done(b, "weights", force=False, cached_only=False)
    assert pq.read_table(b / "weights.parquet") == pq.read_table(a / "weights.parquet")

    half = "share/root/runs/r/iter=0001/weights/ba9876543210"
    fs.pipe(f"{half}/weights.parquet", (a / "weights.parquet").read_bytes())  # the manifest never came
    unfinished = stage_dir("r", "weights", "ba9876543210", 1, url)
    assert not reuse_done(unfinished, "weights", force=False, cached_only=False)
    assert not unfinished.exists()
    assert remote.Remote(url).clean("runs") == [half]
    assert not fs.exists(half) and fs.exists("share/root/runs/r/iter=0001/weights/0123456789ab/manifest.json")


def test_apo_sql_answers_over_an_s3_root_from_an_empty_cache(s3_server, tmp_path):
    """`apo sql --home s3://...` on a machine that never ran the run: records come from the store and DuckDB
    reads the tables through the store (fsspec), not from the cache."""
    url = _bucket("sql")
    env_a = {**s3_server, "APO_CACHE": str(tmp_path / "a")}
    code = ("import json, sys; from stages.pipeline import _write_record; from storage.layout import storage_root;"
            "from tests.test_remote import _publish_weights;"
            f"f = _publish_weights({url!r}, 'aaaaaaaaaaaa', [1, 2, 3]);"
            f"_write_record(storage_root({url!r}) / 'runs/r/iter=0001/iteration.json', "
            "{'iteration': 1, 'weights': str(f.relative_to(storage_root(" + repr(url) + "))), 'checkpoint': 'x'})")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**_env(), **env_a}, check=True)
    out = subprocess.run([sys.executable, "-m", "apo.cli", "sql", "--home", url,
                          "SELECT run, iteration, count(*) FROM weights GROUP BY 1, 2"],
                         cwd=REPO, env={**_env(), **s3_server, "APO_CACHE": str(tmp_path / "b")},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["r\t1\t3"]
    assert not list((tmp_path / "b").rglob("weights.parquet"))  # read from the store


def _env() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if not k.startswith("APO_")}


def test_a_root_url_of_another_scheme_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "apo.cli", "sql", "--home", "gs://bucket/root", "SELECT 1"],
                         cwd=REPO, env=_env(), capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith(
        "storage root 'gs://bucket/root': expected a local folder or s3://bucket[/prefix]"), out.stderr


def _apo_train(output_dir: str, model: Path, num_steps: int, env: dict) -> None:
    args = [sys.executable, "-m", "apo.cli", "train", "--output-dir", output_dir, "--run", "shared",
            "--model", str(model), "--engine", "hf", "--dtype", "float32", "--num-steps", str(num_steps),
            "--eval-goals", "1", "--batch-size", "1", "--rollout-samples", "2", "--v-star-samples", "2",
            "--reference-block", "1", "--sft-demos", "3", "--sft-batch-episodes", "1", "--sft-epochs", "1",
            "--max-episode-steps", "6", "--max-new-tokens", "48", "--eval-frequency", "1"]
    out = subprocess.run(args, cwd=REPO, env={**_env(), **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow  # three tiny `apo train` runs: about 3 minutes on an idle 2-core machine, 9 on a busy one
def test_two_workers_with_their_own_caches_continue_one_run_on_s3(s3_server, tiny_model, tmp_path):
    """Worker A runs iteration 1 of a run on an s3:// root; worker B, with an empty cache of its own, continues
    it to iteration 2, taking A's stages (warm start, reference, iteration 1's checkpoint) from the store
    instead of recomputing them. The store ends with the same tables, records and checkpoints as the same two
    iterations run in one go on a local root (hf engine, fixed seed)."""
    url = _bucket("e2e")
    fs = remote.filesystem("s3")
    _apo_train(str(tmp_path / "local"), tiny_model, 2, {})
    _apo_train(url, tiny_model, 1, {**s3_server, "APO_CACHE": str(tmp_path / "a")})
    first = {k: v["LastModified"] for k, v in fs.find("e2e/root/runs", detail=True).items()}
    _apo_train(url, tiny_model, 2, {**s3_server, "APO_CACHE": str(tmp_path / "b")})
    after = fs.find("e2e/root/runs", detail=True)
    rewritten = sorted(k for k, t in first.items() if after[k]["LastModified"] != t and not k.endswith(".json"))
    assert rewritten == [], "worker B recomputed stages worker A had published"
    assert list((tmp_path / "b").rglob("iter=0001/train/*/checkpoint/model.safetensors"))  # fetched, once

    assert_store_equals_local("e2e", tmp_path / "local", [tmp_path / w for w in ("a", "b")], tmp_path / "store")


def assert_store_equals_local(bucket: str, local: Path, caches: list[Path], download: Path) -> None:
    """The run "shared" on s3://<bucket>/root holds the same tables, records and checkpoints as on the local
    root, but for what legitimately differs: the episodes' checkpoint column names the writer's own cache, and a
    record keeps its command's root and --num-steps."""
    from test_faults import assert_same, run_tables

    remote.filesystem("s3").get(f"{bucket}/root/runs/", str(download / "runs") + "/", recursive=True)
    tables, expected = run_tables(download, "shared"), run_tables(local, "shared")
    for name, value in tables.items():
        if not name.endswith(".safetensors"):
            text = json.dumps(value)
            for cache in caches:
                text = text.replace(str(cache / "s3" / bucket / "root"), "<root>")
            tables[name] = json.loads(text)
    for records in (tables, expected):
        for name in (n for n in records if n.endswith("iteration.json")):
            assert records[name]["config"].pop("output_dir") in (f"s3://{bucket}/root", "<root>")
            records[name]["config"].pop("num_steps")
    assert_same(tables, expected)


def _deployment_run(env: dict, config: dict, *params: str) -> None:
    """`prefect deployment run apo/iteration` with `config`, watched to its end (it must complete)."""
    out = subprocess.run([env["PREFECT"], "deployment", "run", "apo/iteration",
                          "--param", f"config={json.dumps(config)}", *params,
                          "--watch", "--watch-interval", "2", "--watch-timeout", "900"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "Completed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.slow  # a Prefect server, two workers, two iterations of a tiny model: about 5 minutes on 2 cores
def test_an_iteration_sharded_over_two_prefect_workers_on_s3_equals_one_worker_on_a_local_root(
        s3_server, prefect_server, tiny_model, tmp_path):
    """The deployment `apo/iteration` with shards=2 on an s3:// root, through two process workers with caches of
    their own: the worker that takes the iteration waits in it (--limit 1), so the other plays every reference,
    rollout and eval shard, and the iteration merges them from the store, trains and publishes. The store ends
    with the same tables, records and checkpoint as the same deployment run by one worker on a local root (its
    shards as tasks of the iteration's own run; hf engine, fixed seed)."""
    import os
    import signal

    url = _bucket("workers")
    config = {"model": str(tiny_model), "engine": "hf", "dtype": "float32", "run": "shared", "num_steps": 1,
              "batch_size": 2, "rollout_samples": 2, "v_star_samples": 2, "reference_block": 1, "eval_goals": 3,
              "max_episode_steps": 6, "max_new_tokens": 8, "shards": 2}
    caches = [tmp_path / w for w in ("a", "b")]
    workers = [subprocess.Popen([prefect_server["PREFECT"], "worker", "start", "--pool", "apo", "--type", "process",
                                 "--limit", "1", "--name", f"worker-{c.name}"],
                                env={**prefect_server, **s3_server, "APO_CACHE": str(c)}, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
               for c in caches]
    try:
        _deployment_run(prefect_server, {**config, "output_dir": url}, "--param", "shard_deployment=apo-shard/shard")
        _deployment_run(prefect_server, {**config, "output_dir": str(tmp_path / "local")})
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
            w.wait()
    trained = [c for c in caches if list(c.rglob("iter=0001/weights/*/manifest.json"))]
    assert len(trained) == 1, "one worker ran the iteration (weights, train), in its own cache"
    shards = [c for c in caches if c not in trained][0]
    played = sorted(p.parent.parent.name for p in shards.rglob("*-shards/*/manifest.json"))
    assert played == ["eval-shards"] * 2 + ["reference-shards"] * 2 + ["rollout-shards"] * 2, played
    assert not list(trained[0].rglob("*-shards/.tmp-*")) and not list(shards.rglob("weights"))
    assert_store_equals_local("workers", tmp_path / "local", caches, tmp_path / "store")


def test_a_stage_whose_upload_failed_is_uploaded_when_next_found_done(s3_server, tmp_path, monkeypatch):
    """The local rename is the cache's commit, the manifest's upload the store's: a stage done in the cache whose
    upload did not finish (here: its manifest removed from the store) is uploaded when a command next reuses it,
    instead of never reaching the other workers."""
    url = _bucket("heal")
    monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))
    folder = _publish_weights(url, "cccccccccccc", [4, 5])
    fs = remote.filesystem("s3")
    manifest = "heal/root/runs/r/iter=0001/weights/cccccccccccc/manifest.json"
    fs.rm(manifest)
    assert reuse_done(folder, "weights", force=False, cached_only=False)
    fs.invalidate_cache()
    assert fs.exists(manifest)


def test_a_missing_bucket_is_one_line_before_a_run_starts(s3_server):
    from storage.layout import writable_root

    with pytest.raises(ValueError, match=r"^storage root s3://no-such-bucket/root is not writable \(.*\): check "
                                         r"the bucket and the AWS_\* settings$"):
        writable_root("s3://no-such-bucket/root")
    assert writable_root(_bucket("fine")).is_dir()


def test_a_record_rewritten_at_the_same_size_is_refreshed(s3_server, tmp_path, monkeypatch):
    """A replay rewrites iteration.json with new folder keys of the same length: the other cache must see the
    new record, not keep its copy because the size did not change."""
    url = _bucket("records")
    monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))
    from storage.layout import storage_root

    a = storage_root(url) / "runs/r/iter=0001/iteration.json"
    a.parent.mkdir(parents=True)
    for key in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        a.write_text(json.dumps({"train": f"runs/r/iter=0001/train/{key}"}))
        remote.push_record(a)
        monkeypatch.setenv("APO_CACHE", str(tmp_path / "b"))
        b_run = storage_root(url) / "runs/r"
        remote.pull_records(b_run)
        assert json.loads((b_run / "iter=0001/iteration.json").read_text())["train"].endswith(key)
        monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))


def test_a_pruned_checkpoint_leaves_the_store_too(s3_server, tmp_path, monkeypatch):
    """Checkpoint pruning (save_frequency) on an s3:// root removes the weights from the store as from the cache,
    keeping the stage's manifest and metrics there: the store does not grow by a checkpoint per iteration."""
    from stages.config import Config
    from stages.pipeline import _prune_checkpoints, _write_record
    from storage.layout import storage_root

    url = _bucket("prune")
    monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))
    folder = stage_dir("r", "train", "dddddddddddd", 1, url)
    with stage_output(folder, {"stage": "train", "key": "dddddddddddd"}) as tmp:
        (tmp / "checkpoint").mkdir()
        (tmp / "checkpoint" / "model.safetensors").write_bytes(b"weights")
        pq.write_table(pa.table({"step": [1]}), tmp / "train_metrics.parquet")
    relative = folder.relative_to(storage_root(url))
    _write_record(storage_root(url) / "runs/r/iter=0001/iteration.json",
                {"iteration": 1, "train": str(relative), "checkpoint": str(relative / "checkpoint")})
    fs = remote.filesystem("s3")
    stored = f"prune/root/{relative}"
    assert fs.exists(f"{stored}/checkpoint/model.safetensors")

    _prune_checkpoints(Config(run="r", output_dir=url, save_frequency=50), 3)
    fs.invalidate_cache()
    assert not (folder / "checkpoint").exists() and not fs.exists(f"{stored}/checkpoint/model.safetensors")
    assert fs.exists(f"{stored}/manifest.json") and fs.exists(f"{stored}/train_metrics.parquet")


def test_a_second_machine_cannot_write_a_run_that_another_writes(s3_server, tmp_path, monkeypatch):
    """Each machine locks its own cache, so the writer also holds a lease on the store: a second machine's writer is
    one line naming the first while it writes, writes once it released, and takes over a lease that its writer
    stopped renewing (a machine that died) or that a process of this host left when it died."""
    import os
    import socket
    import time

    from storage import locks
    from storage.layout import storage_root
    from storage.locks import LEASE_SECONDS, RunLocked, writer_lock

    url = _bucket("lease")
    fs = remote.filesystem("s3")
    lease = "lease/root/runs/r/writer.lease"

    def held() -> dict:
        fs.invalidate_cache()
        return json.loads(fs.cat(lease)) if fs.exists(lease) else {}

    monkeypatch.setenv("APO_CACHE", str(tmp_path / "a"))
    a = storage_root(url) / "runs" / "r"
    monkeypatch.setenv("APO_CACHE", str(tmp_path / "b"))
    b = storage_root(url) / "runs" / "r"
    with writer_lock(a, "r"):
        assert held()["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=r"^run 'r' is being written by pid \d+ on .*; its lease on the store was "
                                            r"renewed \d+ s ago\): wait for it to end or use another --run$"):
            with writer_lock(b, "r"):
                pass
    assert held() == {}
    monkeypatch.setattr(locks, "RENEW_SECONDS", 0.2)
    with writer_lock(b, "r"):
        first = held()
        time.sleep(1.0)
        assert held()["pid"] == os.getpid() and held()["renewed"] > first["renewed"]  # renewed while held

    gone = subprocess.Popen(["true"])
    gone.wait()
    for holder in ({"pid": 1, "host": "elsewhere", "renewed": time.time() - LEASE_SECONDS - 1},
                   {"pid": gone.pid, "host": socket.gethostname(), "renewed": time.time()}):
        fs.pipe(lease, json.dumps(holder).encode())
        with writer_lock(b, "r"):
            assert held()["pid"] == os.getpid()
    fs.pipe(lease, json.dumps({"pid": 1, "host": "elsewhere", "renewed": time.time() - 5}).encode())
    with pytest.raises(RunLocked, match=r"pid 1 on elsewhere .*renewed 5 s ago"):
        with writer_lock(b, "r"):
            pass
    assert held()["host"] == "elsewhere"
    fs.rm(lease)
