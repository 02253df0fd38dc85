"""Training-step benchmark: our loss path (stages.train.action_logprobs: the body once, logits only at action
positions, in chunks) against a plain full-logits implementation, in the same run, on the same batch.

Run:
    .venv/bin/python -m bench.train [--sequences 8] [--seq-len 512] [--action-tokens 32] [--steps 3]
                                    [--shared-prefix 213]
                                    [--model smollm2-135m|smollm2-135m-random|qwen2.5-1.5b-random|tiny-random]
                                    [--device auto|cpu|cuda] [--train-layers 10] [--impls ours,ours-sdpa]
                                    [--out bench/results/train.json]

Each implementation runs in its own subprocess (so each peak RSS is its own): the embedded SmolLM2-135M as
the policy (fp32 master weights, AdamW, autocast to the dtype `--dtype auto` picks on the machine, as
stages/train.py trains) and a frozen copy as the
reference, `--sequences` right-padded sequences of `--seq-len` random tokens whose first `--shared-prefix` are the
same in every sequence (a WebShop prompt opens with 213 tokens of system text and worked example) and whose last
`--action-tokens` are the "action" tokens, the weighted-SFT loss (weighted CE + 0.02 x KL over the vocabulary). One untimed warm-up
step, then `--steps` timed optimizer steps. tokens/s counts every sequence token (what the forward processes).

    plain      model(input_ids).logits for every position (B x T x V, upcast to fp32 by transformers),
               log_softmax over all of them, gather the action positions; the same for the reference; one batch.
    ours       the trainer's `stages.train.train_step`: micro-batches of --micro-batch-size with gradient
               accumulation; lm_head + log_softmax only at the action positions, `logits_chunk` at a time; each
               micro-batch's shared prefix runs once (`stages.train.body_states`).
    ours-unshared  the same with `share_prefix` off: every sequence runs whole, its prefix included.
    ours-sdpa  ours with transformers' sdpa attention and its explicit padding mask instead of the trainer's
               (`stages.train.right_padded_causal_attention`: causal, no mask, so the kernels skip the blocks
               above the diagonal).
    ours+ckpt  the same with the model's gradient checkpointing on (activations recomputed in backward; every
               sequence runs whole: HF drops caches under checkpointing).
    ours+top   ours with only the top `--train-layers` decoder layers trained (`--train-layers`: the layers
               below, the embeddings and the tied head frozen, stages.train.freeze_below): no backward below.
The goal from the issue: 8 sequences of 512 tokens train in under 6 GiB on CPU.

On a GPU (`--device cuda`, or `auto` where one is visible) the same three run there; peak memory is then
`torch.cuda.max_memory_allocated`. `--model qwen2.5-1.5b-random` swaps the embedded model for a randomly
initialised Qwen2.5-1.5B-shaped one (no weights to carry; a GPU machine without the hub can run it),
`smollm2-135m-random` a randomly initialised model of the embedded model's shape (the size the learning benchmark
trains), and `tiny-random` is a 2-layer Qwen2 to try the path on a CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from storage.files import write_json

GOAL_MIB = 6 * 1024
IMPLS = ("plain", "ours", "ours-unshared", "ours-sdpa", "ours+ckpt", "ours+top")
MODELS = ("smollm2-135m", "smollm2-135m-random", "qwen2.5-1.5b-random", "tiny-random")


def load_policy(model: str, home: str | None, device: str):
    """fp32 policy on `device`: the embedded model, or a randomly initialised one of bench.rollout's shapes
    (initialised on the device itself: a 1.5B init on the CPU takes longer than the benchmark)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from bench.rollout import QWEN25_15B, SMOLLM2_135M, TINY
    from policy.models import resolve_model

    if model == "smollm2-135m":
        return AutoModelForCausalLM.from_pretrained(resolve_model(model, home), dtype=torch.float32).to(device)
    config = {"qwen2.5-1.5b-random": lambda: Qwen2Config(**QWEN25_15B),
              "smollm2-135m-random": lambda: LlamaConfig(**SMOLLM2_135M),
              "tiny-random": lambda: Qwen2Config(**TINY)}[model]()
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def run_worker(impl: str, sequences: int, seq_len: int, action_tokens: int, steps: int, micro_batch_size: int,
               home: str | None, model: str, device: str, train_layers: int, shared_prefix: int) -> dict:
    import copy

    import torch
    import torch.nn.functional as F

    import datasets

    from policy.hardware import resolve_dtype, torch_dtype
    from stages.train import TrainParams, freeze_below, train_step, use_training_attention

    torch.manual_seed(0)
    policy = load_policy(model, home, device).train()
    if impl not in ("plain", "ours-sdpa"):  # the trainer's attention (stages.train.load_policy sets it)
        use_training_attention(policy)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    if impl == "ours+ckpt":
        policy.gradient_checkpointing_enable()
    if impl == "ours+top":
        freeze_below(policy, train_layers)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-6)
    ids = torch.randint(0, policy.config.vocab_size, (sequences, seq_len))
    ids[:, :shared_prefix] = ids[0, :shared_prefix]
    mask = torch.ones_like(ids)
    weights = torch.linspace(0.1, 5.0, sequences).repeat_interleave(action_tokens).to(device)
    # Our path is the trainer's own train_step on the same batch: one episode per sequence, micro-batches.
    data = datasets.Dataset.from_list([
        {"episode_id": f"e{i}", "turn": 0, "prompt_ids": ids[i, :seq_len - action_tokens].tolist(),
         "completion_ids": ids[i, seq_len - action_tokens:].tolist(), "weight": float(weights[i * action_tokens]),
         "apo_target": 0.0, "episode_tokens": action_tokens} for i in range(sequences)])
    params = TrainParams(micro_batch_size=micro_batch_size, learning_rate=5e-6, share_prefix=impl != "ours-unshared")
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def plain_logprobs(model):
        dev_ids = ids.to(device)
        logits = F.log_softmax(model(input_ids=dev_ids, attention_mask=mask.to(device)).logits.float(), dim=-1)
        pos = torch.arange(seq_len - action_tokens - 1, seq_len - 1, device=device)
        picked = logits[:, pos]                                   # [B, A, V]
        return picked.reshape(-1, picked.shape[-1]), dev_ids[:, pos + 1].reshape(-1)

    def step():
        if impl != "plain":
            return train_step(policy, ref, data, params, optimizer, pad_id=0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        dtype = resolve_dtype("auto", device)
        with torch.autocast(torch.device(device).type, dtype=torch_dtype(dtype), enabled=dtype != "float32"):
            lp, tgt = plain_logprobs(policy)
            with torch.no_grad():
                rp, _ = plain_logprobs(ref)
            logp = lp.gather(1, tgt[:, None])[:, 0]
            kl = (lp.exp() * (lp - rp)).sum(-1)
        loss = ((-logp * weights).sum() + 0.02 * kl.sum()) / (sequences * action_tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    step()  # warm-up
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]  # .item() in each step waits for the GPU
    seconds = time.perf_counter() - start
    res = {"impl": impl, "model": model, "device": device, "steps": steps, "seconds": seconds,
           "tokens_per_s": steps * sequences * seq_len / seconds,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_after_load_mib": rss_after_load, "last_loss": losses[-1], "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        res |= {"peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20, "gpu": torch.cuda.get_device_name(0)}
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--action-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="ours: sequences per forward/backward")
    parser.add_argument("--train-layers", type=int, default=10, help="ours+top: decoder layers trained")
    parser.add_argument("--shared-prefix", type=int, default=213, help="leading tokens every sequence shares")
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda where torch sees a GPU")
    parser.add_argument("--home", default=None, help="storage root holding the converted embedded model")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument("--out", default="bench/results/train.json")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (args.sequences, args.seq_len, args.action_tokens, args.steps, args.micro_batch_size, args.home,
             args.model, args.device, args.train_layers, args.shared_prefix)
    if args.worker:
        print(json.dumps(run_worker(args.worker, *shape)))
        return
    impls = args.impls.split(",")
    if unknown := set(impls) - set(IMPLS):
        sys.exit(f"bench.train: --impls {args.impls!r}: {', '.join(sorted(unknown))} not one of {', '.join(IMPLS)}")
    results = {}
    for impl in impls:
        cmd = [sys.executable, "-m", "bench.train", "--worker", impl, "--sequences", str(args.sequences),
               "--seq-len", str(args.seq_len), "--action-tokens", str(args.action_tokens), "--steps", str(args.steps),
               "--micro-batch-size", str(args.micro_batch_size), "--model", args.model, "--device", args.device,
               "--train-layers", str(args.train_layers), "--shared-prefix", str(args.shared_prefix)]
        if args.home:
            cmd += ["--home", args.home]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:  # e.g. plain's full logits out of memory: a result of its own, reported as such
            error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            results[impl] = {"impl": impl, "error": error[:300]}
            print(f"{impl} failed: {error[:300]}", file=sys.stderr)
    done = [r for r in results.values() if "error" not in r]
    if not done:
        sys.exit("bench.train: every implementation failed (see above)")
    base = next((r for r in done if r["impl"] == "plain"), done[0])
    on_gpu = args.device == "cuda"
    memory = "peak_cuda_mib" if on_gpu else "peak_rss_mib"
    from policy.hardware import describe_machine, resolve_dtype
    where = f"GPU ({base['gpu']})" if on_gpu else describe_machine("cpu")
    print(f"\n{args.sequences} sequences x {args.seq_len} tokens ({args.shared_prefix} shared by all, "
          f"{args.action_tokens} action tokens each), "
          f"{args.steps} timed steps, {args.model} on {where}; ours: micro-batches of {args.micro_batch_size}; "
          f"ours+top: the top {args.train_layers} decoder layers trained\n")
    print(f"| implementation | tokens/s | vs {base['impl']} | {'peak CUDA allocated' if on_gpu else 'peak RSS'} MiB "
          f"| vs {base['impl']} | < 6 GiB | loss (last step) |")
    print("|---|---|---|---|---|---|---|")
    for impl in impls:
        r = results[impl]
        if "error" in r:
            print(f"| {impl} | failed: {r['error'][:80]} | | | | | |")
            continue
        print(f"| {impl} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{r[memory]:,.0f} | {base[memory] / r[memory]:.2f}x less | "
              f"{'yes' if r[memory] < GOAL_MIB else 'no'} | {r['last_loss']:.4f} |")
    write_json(args.out, {
        "command": " ".join(sys.argv), "machine": {"python": platform.python_version(),
                                                   "cpu": describe_machine("cpu"), "gpu": base.get("gpu"),
                                                   "dtype": resolve_dtype("auto", args.device)},
        "shape": dict(zip(("sequences", "seq_len", "action_tokens", "steps", "micro_batch_size", "home", "model",
                           "device", "train_layers", "shared_prefix"), shape)),
        "results": results})

if __name__ == "__main__":
    main()
