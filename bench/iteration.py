"""One A*-PO iteration's wall time, split by phase, for the code before a change and after it, side by side.

    python -m bench.iteration [--baseline REV] [--config JSON] [--engine auto|vllm|hf]
                              [--model smollm2-135m|qwen2.5-1.5b-random] [--baseline-limit S] [--out FILE]

Each side is a copy of the code (`--baseline`, default the commit before the speed work, taken with
`git archive`; and this working tree) running iteration 1 of the same fresh run, `--config` (default: what
`make run` runs, the Makefile's RUN_CONFIG), through the `apo` flow in Prefect's ephemeral mode, in a process of
its own, one side after the other on an otherwise idle machine. Both sides load the same converted checkpoint.

A probe inside each process wraps the functions every version of the pipeline calls (`make_engine`, the engines'
`generate`, `rollout_stage`, `weights_stage`, `train_stage`, `train_step`) with timers that count exclusive time
(a stage's own time, less the engine start and generation inside it):

    engine start      make_engine: a new engine (vLLM: processes, weights, KV cache)
    prefill, decode   generate calls; vLLM's per-request prefill and decode times apportion each call's wall time
                      (the hf engine reports one `generate` phase)
    environment       the rollout stages' own time: observations, prompts, environment steps, Parquet writes
    weights SQL       the weights stage (DuckDB)
    training          train_step (forward, backward, optimizer), and loading / saving checkpoints
    evaluation        the eval stage's own time (its generation is in prefill / decode)
    Prefect + other   the rest of the flow run's wall time: Prefect's ephemeral server, task runs, bookkeeping

Roofline, as nanoGPT logs it: training MFU = 6 x params x training tokens/s over the machine's peak FLOP/s
(measured in this run: the best of fp32 / bf16 square matmuls); decode tokens/s over the memory-bandwidth bound
(bandwidth measured with a large copy, x the mean number of sequences per decode step, / the bytes of the
weights in the engine's dtype).

The before side is stopped after `--baseline-limit` seconds (default: 3.5x the after side's process time, enough
to show a 3x ratio); its column then says in which phase it was stopped, that phase gets the time since it began,
and its iteration time is a lower bound.
`--measure-swap` (on with vLLM) also times what a new checkpoint costs the engine: a restart against reloading
the weights in place, and checks the reloaded engine's log-probabilities against the new weights.

On a GPU: `--engine hf --model qwen2.5-1.5b-random` (a randomly initialised Qwen2.5-1.5B-shaped model with the
embedded tokenizer; the GPU machines here carry no vLLM).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from storage.files import write_json

REPO = Path(__file__).resolve().parents[1]
BASELINE = "479c5fa"  # the last commit before the speed work (issue 15)
PHASES = ("engine start", "prefill", "decode", "generate", "environment", "weights SQL", "training",
          "evaluation", "Prefect + other")


# ------------------------------------------------------------------------------------------------ probe
# Runs inside each side's process, with that side's code first on sys.path; imports only what every version has.

class Clock:
    """Exclusive time per phase: a wrapped call's time less the wrapped calls inside it. Appended to a JSON file
    after every call, so a side stopped at its limit still leaves what it measured."""

    def __init__(self, path: Path):
        self.path, self.stack, self.totals, self.counts = path, [], defaultdict(float), defaultdict(float)
        self.open: list[tuple[str, float]] = []  # (phase, wall-clock start) of the calls in progress

    def wrap(self, owner, name: str, phase, after=None):
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            label = phase(args, kwargs) if callable(phase) else phase
            start = time.perf_counter()
            self.stack.append(0.0)
            self.open.append((label, time.time()))
            self.dump()
            try:
                result = fn(*args, **kwargs)
            finally:
                self.open.pop()
                inner, seconds = self.stack.pop(), time.perf_counter() - start
                self.totals[label] += seconds - inner
                if self.stack:
                    self.stack[-1] += seconds
            if after:
                after(args, result, seconds)
            self.dump()
            return result
        setattr(owner, name, timed)

    def dump(self) -> None:
        write_json(self.path, {"phases": self.totals, "counts": self.counts, "open": self.open})


def vllm_counters(llm) -> dict[str, float]:
    """vLLM's counters, read here rather than through VLLMEngine.stats(): the code before the change has none."""
    names = {"vllm:request_prefill_time_seconds": "prefill_s", "vllm:request_decode_time_seconds": "decode_s",
             "vllm:prompt_tokens": "prompt_tokens", "vllm:prefix_cache_hits": "prefix_cache_hit_tokens",
             "vllm:generation_tokens": "generated_tokens"}
    out = dict.fromkeys(names.values(), 0.0)
    for m in llm.get_metrics():
        if m.name in names:
            out[names[m.name]] += getattr(m, "value", None) or getattr(m, "sum", 0.0)
    return out


def probe(args) -> None:
    sys.path.insert(0, str(args.tree))
    os.chdir(args.tree)
    config_fields = json.loads(args.config)
    from dataclasses import fields

    import flows.apo
    import policy.engines as engines
    import stages.pipeline as pipeline
    import stages.train as train
    from apo.cli import configure_prefect

    Config = flows.apo.Config  # the flow's own (it moved from apo/config.py to stages/config.py)
    known = {f.name for f in fields(Config)}
    config = Config(**{k: v for k, v in config_fields.items() if k in known})
    clock = Clock(Path(args.result))
    if engines.vllm_available() and config.engine in ("auto", "vllm"):
        import vllm
        init = vllm.LLM.__init__

        def init_with_stats(self, *a, **k):  # the counters that split generation into prefill and decode
            init(self, *a, **{**k, "disable_log_stats": False})
        vllm.LLM.__init__ = init_with_stats

    def generated(a, completions, seconds):
        engine, prompts = a[0], a[1]
        c = clock.counts
        c["generate_calls"] += 1
        c["sequences"] += len(prompts)
        c["prompt_tokens"] += sum(map(len, prompts))
        c["generated_tokens"] += sum(len(x.token_ids) for x in completions)
        llm = getattr(engine, "llm", None)
        if llm is None:  # hf: no counters, generation stays one phase
            return
        now = vllm_counters(llm)
        before = getattr(engine, "_bench_counters", dict.fromkeys(now, 0.0))
        engine._bench_counters = now
        d = {k: now[k] - before[k] for k in now}
        share = d["prefill_s"] / (d["prefill_s"] + d["decode_s"]) if d["prefill_s"] + d["decode_s"] else 0.5
        clock.totals["generate"] -= seconds  # moved into prefill / decode
        clock.totals["prefill"] += seconds * share
        clock.totals["decode"] += seconds * (1 - share)
        c["prefix_cache_hit_tokens"] += d["prefix_cache_hit_tokens"]
        c["decode_seconds"] += seconds * (1 - share)

    def trained(a, metrics, seconds):
        clock.counts["train_tokens"] += metrics["tokens"]
        clock.counts["train_step_seconds"] += seconds

    clock.wrap(pipeline, "make_engine", "engine start")
    for cls in (engines.HFEngine, engines.VLLMEngine):
        clock.wrap(cls, "generate", "generate", after=generated)
    stage_phase = {"reference": "environment", "rollout": "environment", "eval": "evaluation"}
    clock.wrap(pipeline, "rollout_stage", lambda a, k: stage_phase[k["stage"]])
    clock.wrap(pipeline, "eval_stage", "evaluation")
    clock.wrap(pipeline, "weights_stage", "weights SQL")
    clock.wrap(pipeline, "train_stage", "training")
    clock.wrap(train, "train_step", "training", after=trained)

    configure_prefect(config.output_dir)
    start = time.perf_counter()
    pipeline.shop(config)  # catalogue and goals: the same for both sides, timed apart from the iteration
    clock.counts["setup_seconds"] = time.perf_counter() - start
    clock.counts["flow_started"] = time.time()  # a stopped side's iteration time is measured from here
    clock.dump()
    start = time.perf_counter()
    flows.apo.apo(config, 1)
    pipeline.release_engine()
    clock.counts["wall_seconds"] = time.perf_counter() - start
    clock.totals["Prefect + other"] = clock.counts["wall_seconds"] - sum(
        v for k, v in clock.totals.items() if k != "Prefect + other")
    clock.dump()


# ------------------------------------------------------------------------------------------------ roofline

def machine_peaks(seconds: float = 2.0) -> dict:
    """Best matmul FLOP/s over fp32 and bf16 (what this machine's cores reach), and copy bandwidth."""
    import torch

    from policy.hardware import describe_machine, device_type
    device = device_type()
    flops = {}
    for dtype in (torch.float32, torch.bfloat16):
        n = 2048 if device == "cuda" else 1024
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 4 or reps < 2:
            a @ b
            reps += 1
            if device == "cuda":
                torch.cuda.synchronize()
        flops[str(dtype).split(".")[1]] = 2 * n ** 3 * reps / (time.perf_counter() - start)
    x = torch.empty(2 ** 28, dtype=torch.uint8, device=device)  # 256 MiB
    y = torch.empty_like(x)
    y.copy_(x)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        y.copy_(x)
        reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
    bandwidth = 2 * x.numel() * reps / (time.perf_counter() - start)  # read + write
    return {"machine": describe_machine(), "peak_flops": max(flops.values()), "matmul_flops": flops,
            "bandwidth_bytes_s": bandwidth}


# ------------------------------------------------------------------------------------------------ parent

def makefile_run_config() -> dict:
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("RUN_CONFIG ?="):
            return json.loads(line.split("?=", 1)[1])
    raise ValueError("Makefile has no RUN_CONFIG line")


def checkout(rev: str, dest: Path) -> Path:
    """The code at `rev`, unpacked (no worktree state left behind)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_side(name: str, tree: Path, config: dict, result: Path, limit: float | None, log: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", "--tree", str(tree), "--config",
           json.dumps(config), "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": str(tree), "PREFECT_HOME": str(Path(config["output_dir"]) / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # a new home's migrations, on 2 cores
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc, stopped = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the side and its engine's processes
            rc, stopped = proc.wait(), True
    wall, ended = time.perf_counter() - start, time.time()
    data = json.loads(result.read_text()) if result.is_file() else {"phases": {}, "counts": {}, "open": []}
    if rc and not stopped:
        raise RuntimeError(f"side {name!r} failed (exit {rc}); its log: {log}")
    counts, phases = data["counts"], data["phases"]
    iteration = counts.get("wall_seconds") or ended - counts.get("flow_started", ended - wall)
    if stopped and data["open"]:  # the call in progress when the side was stopped gets the time since it began
        label, began = data["open"][-1]
        phases[label] = phases.get(label, 0.0) + ended - began
        data["stopped_in"] = label
    if stopped:
        phases["Prefect + other"] = iteration - sum(v for k, v in phases.items() if k != "Prefect + other")
    return {"side": name, "stopped": stopped, "iteration_s": iteration, "process_s": wall, **data}


def summarise(side: dict, peaks: dict, params: int, dtype_bytes: int) -> dict:
    c = side["counts"]
    train_tps = c["train_tokens"] / c["train_step_seconds"] if c.get("train_step_seconds") else None
    decode_tps = c["generated_tokens"] / c["decode_seconds"] if c.get("decode_seconds") else None
    steps_batch = c["sequences"] / c["generate_calls"] if c.get("generate_calls") else None
    bound = (peaks["bandwidth_bytes_s"] / (params * dtype_bytes) * steps_batch) if decode_tps else None
    return {"train_tokens_per_s": train_tps,
            "mfu": 6 * params * train_tps / peaks["peak_flops"] if train_tps else None,
            "decode_tokens_per_s": decode_tps,
            "decode_bound_tokens_per_s": bound,
            "decode_fraction_of_bound": decode_tps / bound if decode_tps and bound else None,
            "prefix_cache_hit_rate": (c["prefix_cache_hit_tokens"] / c["prompt_tokens"]
                                      if c.get("prompt_tokens") and "prefix_cache_hit_tokens" in c else None)}


def table(sides: list[dict]) -> str:
    def cell(side, phase):
        v = side["phases"].get(phase)
        return "" if v is None or abs(v) < 0.05 else f"{v:.1f}"
    names = [s["side"] + (f" (stopped in {s.get('stopped_in', '?')})" if s["stopped"] else "") for s in sides]
    lines = ["| phase (s) | " + " | ".join(names) + " |", "|---|" + "---|" * len(sides)]
    for phase in PHASES:
        if any(cell(s, phase) for s in sides):
            lines.append(f"| {phase} | " + " | ".join(cell(s, phase) for s in sides) + " |")
    lines.append("| **iteration** | " + " | ".join(
        (">" if s["stopped"] else "") + f"{s['iteration_s']:.1f}" for s in sides) + " |")
    rows = [("training tokens/s", "train_tokens_per_s", "{:.0f}"), ("training MFU", "mfu", "{:.1%}"),
            ("decode tokens/s", "decode_tokens_per_s", "{:.1f}"),
            ("decode bandwidth bound tokens/s", "decode_bound_tokens_per_s", "{:.0f}"),
            ("decode / bound", "decode_fraction_of_bound", "{:.1%}"),
            ("prefix-cache hits (prompt tokens)", "prefix_cache_hit_rate", "{:.0%}")]
    for label, key, fmt in rows:
        values = [s["summary"].get(key) for s in sides]
        if any(v is not None for v in values):
            lines.append(f"| {label} | " + " | ".join("" if v is None else fmt.format(v) for v in values) + " |")
    return "\n".join(lines)


def measure_swap(model: Path, work: Path, dtype: str) -> dict:
    """A new checkpoint for a running vLLM engine: restart against reloading the weights in place. The new
    checkpoint is the model with noise added; each way's greedy log-probabilities are compared with a teacher-forced
    pass of the new weights."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from policy.engines import Sampling, make_engine
    from stages.train import TOKENIZER_FILES
    new = work / "perturbed"
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    m.save_pretrained(new)
    for name in TOKENIZER_FILES:
        if (model / name).is_file():
            shutil.copy(model / name, new / name)
    teacher = AutoModelForCausalLM.from_pretrained(new, dtype=torch.float32).eval()

    def error(engine) -> float:
        tok = engine.tokenizer
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"List {i} fruits"}], tokenize=True,
                                           add_generation_prompt=True, return_dict=False) for i in range(4)]
        worst = 0.0
        for p, c in zip(prompts, engine.generate(prompts, Sampling(0.0, 1.0, 12, 0))):
            with torch.no_grad():
                lp = teacher(torch.tensor([p + c.token_ids])).logits[0].log_softmax(-1)
            want = [lp[len(p) - 1 + i, t].item() for i, t in enumerate(c.token_ids)]
            worst = max([worst] + [abs(a - b) for a, b in zip(want, c.logprobs)])
        return worst

    engine = make_engine("vllm", model, dtype=dtype)
    engine.generate([[1, 2, 3]], Sampling(0.0, 1.0, 4, 0))
    start = time.perf_counter()
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(new)})
    engine.llm.reset_prefix_cache()
    reload_s = time.perf_counter() - start
    reload_err = error(engine)
    start = time.perf_counter()
    engine.close()
    engine = make_engine("vllm", new, dtype=dtype)
    restart_s = time.perf_counter() - start
    restart_err = error(engine)
    engine.close()
    return {"reload_s": reload_s, "reload_max_logprob_error": reload_err, "restart_s": restart_s,
            "restart_max_logprob_error": restart_err}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' side")
    parser.add_argument("--config", default=None, help="JSON of Config fields (default: the Makefile's RUN_CONFIG)")
    parser.add_argument("--engine", default="auto", choices=("auto", "vllm", "hf"))
    parser.add_argument("--model", default="smollm2-135m", choices=("smollm2-135m", "qwen2.5-1.5b-random"))
    parser.add_argument("--baseline-limit", type=float, default=None,
                        help="stop the 'before' side after this many seconds (default: 4x the 'after' side)")
    parser.add_argument("--measure-swap", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "iteration.json")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args)

    from policy.engines import vllm_available
    from policy.hardware import checkpoint_params, engine_dtype
    from policy.models import resolve_model
    work = Path(tempfile.mkdtemp(prefix="bench-iteration-"))
    model = resolve_model("smollm2-135m", work / "models-home")
    if args.model == "qwen2.5-1.5b-random":
        from bench.rollout import QWEN25_15B, random_model
        model = random_model(model, work / "qwen2.5-1.5b-random", QWEN25_15B)
    engine = "vllm" if args.engine == "auto" and vllm_available() else ("hf" if args.engine == "auto" else args.engine)
    config = {**(json.loads(args.config) if args.config else makefile_run_config()), "model": str(model),
              "engine": engine, "run": "bench"}
    peaks = machine_peaks()
    print(f"machine: {peaks['machine']}; config: {json.dumps(config)}", flush=True)
    trees = {"after": REPO, "before": checkout(args.baseline, work / "before-tree")}
    sides = []
    for name in ("after", "before"):  # after first: its wall time sets the before side's limit
        side_config = {**config, "output_dir": str(work / f"root-{name}")}
        limit = (args.baseline_limit or 3.5 * sides[0]["process_s"]) if name == "before" else None
        print(f"running {name} ({trees[name]}){f', limit {limit:.0f} s' if limit else ''} ...", flush=True)
        side = run_side(name, trees[name], side_config, work / f"{name}.json", limit, work / f"{name}.log")
        print(f"  {name}: {'>' if side['stopped'] else ''}{side['iteration_s']:.1f} s", flush=True)
        sides.append(side)
    params = checkpoint_params(model)
    dtype_bytes = {"float32": 4}.get(engine_dtype("auto", model), 2)
    for side in sides:
        # the before side's engine ran bf16 whatever the machine
        side["summary"] = summarise(side, peaks, params, dtype_bytes if side["side"] == "after" else 2)
    before, after = sides[1], sides[0]
    result = {"machine": peaks, "model": args.model, "params": params, "engine": engine,
              "config": config, "baseline": args.baseline, "sides": sides,
              "speedup": before["iteration_s"] / after["iteration_s"], "speedup_is_lower_bound": before["stopped"]}
    if args.measure_swap or (args.measure_swap is None and engine == "vllm"):
        result["engine_swap"] = measure_swap(model, work, engine_dtype("auto", model))
    print()
    print(f"One iteration, {args.model}, engine {engine}, on {peaks['machine']}")
    print(f"config: {json.dumps({k: v for k, v in config.items() if k not in ('model', 'output_dir')})}")
    print(table([after, before]))
    print(f"\nspeed-up: {'>' if before['stopped'] else ''}{result['speedup']:.2f}x (before / after)")
    if "engine_swap" in result:
        s = result["engine_swap"]
        print(f"new checkpoint in a running vLLM: reload in place {s['reload_s']:.1f} s (max logprob error "
              f"{s['reload_max_logprob_error']:.3f}), restart {s['restart_s']:.1f} s "
              f"(error {s['restart_max_logprob_error']:.4f})")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
