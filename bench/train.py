"""Training-step benchmark: our loss path (stages.train.action_logprobs: the body once, logits only at action
positions, in chunks) against a plain full-logits implementation, in the same run, on the same batch.

Run:
    .venv/bin/python -m bench.train [--sequences 8] [--seq-len 512] [--action-tokens 32] [--steps 3]
                                    [--out bench/results/train.json]

Each implementation runs in its own subprocess (so each peak RSS is its own): the embedded SmolLM2-135M as
the policy (fp32 master weights, AdamW, bf16 autocast, as stages/train.py trains) and a frozen copy as the
reference, `--sequences` right-padded sequences of `--seq-len` random tokens whose last `--action-tokens` are
the "action" tokens, the weighted-SFT loss (weighted CE + 0.02 x KL over the vocabulary). One untimed warm-up
step, then `--steps` timed optimizer steps. tokens/s counts every sequence token (what the forward processes).

    plain      model(input_ids).logits for every position (B x T x V, upcast to fp32 by transformers),
               log_softmax over all of them, gather the action positions; the same for the reference; one batch.
    ours       the trainer's `stages.train.train_step`: micro-batches of --micro-batch-size with gradient
               accumulation; lm_head + log_softmax only at the action positions, `logits_chunk` at a time.
    ours+ckpt  the same with the model's gradient checkpointing on (activations recomputed in backward).
The goal from the issue: 8 sequences of 512 tokens train in under 6 GiB on CPU.
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

GOAL_MIB = 6 * 1024
IMPLS = ("plain", "ours", "ours+ckpt")


def run_worker(impl: str, sequences: int, seq_len: int, action_tokens: int, steps: int, micro_batch_size: int,
               home: str | None) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    import datasets

    from policy.models import resolve_model
    from stages.train import TrainParams, train_step

    torch.manual_seed(0)
    path = resolve_model("smollm2-135m", home)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    if impl == "ours+ckpt":
        policy.gradient_checkpointing_enable()
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-6)
    ids = torch.randint(0, policy.config.vocab_size, (sequences, seq_len))
    mask = torch.ones_like(ids)
    weights = torch.linspace(0.1, 5.0, sequences).repeat_interleave(action_tokens)
    # Our path is the trainer's own train_step on the same batch: one episode per sequence, micro-batches.
    data = datasets.Dataset.from_list([
        {"episode_id": f"e{i}", "turn": 0, "prompt_ids": ids[i, :seq_len - action_tokens].tolist(),
         "completion_ids": ids[i, seq_len - action_tokens:].tolist(), "weight": float(weights[i * action_tokens]),
         "apo_target": 0.0, "episode_tokens": action_tokens} for i in range(sequences)])
    params = TrainParams(micro_batch_size=micro_batch_size, learning_rate=5e-6)
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def plain_logprobs(model):
        logits = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        pos = torch.arange(seq_len - action_tokens - 1, seq_len - 1)
        picked = logits[:, pos]                                   # [B, A, V]
        return picked.reshape(-1, picked.shape[-1]), ids[:, pos + 1].reshape(-1)

    def step():
        if impl != "plain":
            return train_step(policy, ref, data, params, optimizer, pad_id=0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
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
    losses = [step() for _ in range(steps)]
    seconds = time.perf_counter() - start
    return {"impl": impl, "steps": steps, "seconds": seconds, "tokens_per_s": steps * sequences * seq_len / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_load_mib": rss_after_load, "last_loss": losses[-1], "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--action-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="ours: sequences per forward/backward")
    parser.add_argument("--home", default=None, help="storage root holding the converted embedded model")
    parser.add_argument("--out", default="bench/results/train.json")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.sequences, args.seq_len, args.action_tokens, args.steps, args.micro_batch_size, args.home)
    if args.worker:
        print(json.dumps(run_worker(args.worker, *shape)))
        return
    results = {}
    for impl in IMPLS:
        cmd = [sys.executable, "-m", "bench.train", "--worker", impl, "--sequences", str(args.sequences),
               "--seq-len", str(args.seq_len), "--action-tokens", str(args.action_tokens), "--steps", str(args.steps),
               "--micro-batch-size", str(args.micro_batch_size)]
        if args.home:
            cmd += ["--home", args.home]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
    plain = results["plain"]
    print(f"\n{args.sequences} sequences x {args.seq_len} tokens ({args.action_tokens} action tokens each), "
          f"{args.steps} timed steps, embedded SmolLM2-135M; ours: micro-batches of {args.micro_batch_size}\n")
    print("| implementation | tokens/s | vs plain | peak RSS MiB | vs plain | < 6 GiB | loss (last step) |")
    print("|---|---|---|---|---|---|---|")
    for impl in IMPLS:
        r = results[impl]
        print(f"| {impl} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / plain['tokens_per_s']:.2f}x | "
              f"{r['peak_rss_mib']:.0f} | {plain['peak_rss_mib'] / r['peak_rss_mib']:.2f}x less | "
              f"{'yes' if r['peak_rss_mib'] < GOAL_MIB else 'no'} | {r['last_loss']:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": " ".join(sys.argv), "machine": {"python": platform.python_version(),
                                                   "cpu": platform.processor() or platform.machine()},
        "shape": dict(zip(("sequences", "seq_len", "action_tokens", "steps", "micro_batch_size", "home"), shape)),
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
