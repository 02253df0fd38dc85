"""Prompt benchmark: can a policy learn the oracle's demonstrations from the prompts it is shown, and what do
the prompts cost?

Run:
    .venv/bin/python -m bench.prompts [--data DIR] [--goals N] [--token-goals N] [--out bench/results/prompts.json]

The scripted oracle (`webshop.policies.oracle_policy`) plays every training goal (15-step cap) in each prompt
variant; each turn's prompt is built exactly as the rollout builds it (`policy.prompts`). Per variant:
  - conflicts: distinct prompts that carry two or more different oracle actions, and the share of oracle turns
    on such prompts. A prompt that must map to two actions cannot be learned by any policy: supervised training
    on these demonstrations fits P(action) ~ k/(k+1) for such a prompt, and greedy decoding picks one of them
    every time it is shown.
  - tokens: mean and p95 prompt tokens (the embedded model's tokenizer and chat template) over the episodes of
    the first `--token-goals` goals, and "prefix reuse": the share of a prompt's tokens that equal the start of
    the episode's previous prompt (the first turn: the fixed head every prompt starts with), which is the
    most vLLM's prefix cache can skip for an episode stepped alone.
Variants: "page only" is the prompt before the turn carried state (no previous actions, no selected options,
no reason for an invalid action), with history 0 (the learning benchmark's setting) and 2 (the old default);
"state" is the current prompt in `text` and `text_rich` observation modes, with history 0 and 2, and in our
`compact` mode (the page lists the clicks; the prompt no action list) with history 0.

It prints a markdown table and writes the numbers, the machine and the command to the JSON file (about 3
minutes on 2 cores with the real 1,000-product data).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from storage.files import write_json
from policy.hardware import describe_machine
from policy.prompts import PromptConfig, Turn, build_messages, encode_prompt
from webshop.env import BatchEnv, Shop
from webshop.policies import oracle_policy

VARIANTS = [  # (name, observation mode, history turns, the turn carries state)
    ("page only, history 0", "text", 0, False),
    ("page only, history 2", "text", 2, False),
    ("state, text, history 0", "text", 0, True),
    ("state, text, history 2", "text", 2, True),
    ("state, text_rich, history 0", "text_rich", 0, True),
    ("state, compact, history 0", "compact", 0, True),
]


def oracle_prompts(shop: Shop, goals: list[int], mode: str, history_turns: int, state: bool, max_steps: int = 15):
    """Per episode, the (turn, history, action) of each oracle step, as the rollout would prompt it."""
    env = BatchEnv(shop, mode, max_steps)
    env.reset(goals)
    memories = [{} for _ in goals]
    episodes = [[] for _ in goals]
    while env.live():
        actions = {}
        for i in env.live():
            ep = env.episodes[i]
            turn = Turn.of(ep)
            if not state:
                turn = replace(turn, selected=(), previous_actions=(), invalid_reason=None)
            history = [(t.observation, a) for t, _, a in episodes[i]][-history_turns:] if history_turns else []
            actions[i] = oracle_policy(ep, memories[i])
            episodes[i].append((turn, history, actions[i]))
        env.step(actions)
    success = sum(e.state.reward == 1.0 for e in env.episodes) / len(goals)
    return episodes, success


def conflicts(episodes) -> dict:
    actions_of = defaultdict(set)
    count = defaultdict(int)
    for ep in episodes:
        for turn, history, action in ep:
            key = json.dumps(build_messages(turn, history))
            actions_of[key].add(action)
            count[key] += 1
    bad = [k for k, a in actions_of.items() if len(a) > 1]
    turns = sum(count.values())
    return {"oracle_turns": turns, "distinct_prompts": len(actions_of), "conflicting_prompts": len(bad),
            "turns_on_conflicting_prompts": sum(count[k] for k in bad) / turns}


def token_costs(episodes, tokenizer, history_turns: int) -> dict:
    config = PromptConfig(history_turns=history_turns, max_prompt_tokens=1_000_000)
    head = encode_prompt(tokenizer, Turn("", "", {"has_search_bar": False, "clickables": []}), [], config)
    lengths, reused = [], []
    for ep in episodes:
        previous = head
        for turn, history, _ in ep:
            ids = encode_prompt(tokenizer, turn, history, config)
            shared = next((j for j, (a, b) in enumerate(zip(ids, previous)) if a != b), min(len(ids), len(previous)))
            lengths.append(len(ids))
            reused.append(shared / len(ids))
            previous = ids
    lengths.sort()
    return {"mean_prompt_tokens": sum(lengths) / len(lengths), "p95_prompt_tokens": lengths[int(0.95 * len(lengths))],
            "prefix_reuse": sum(reused) / len(reused)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/webshop", help="WebShop data folder (else: generated 300)")
    parser.add_argument("--goals", type=int, default=None, help="first N training goals (default: all)")
    parser.add_argument("--token-goals", type=int, default=300, help="goals whose prompts are tokenised")
    parser.add_argument("--model", default="smollm2-135m", help="tokenizer and chat template")
    parser.add_argument("--out", default="bench/results/prompts.json")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from policy.models import resolve_model
    from webshop.catalogue import load_dir
    from webshop.generate import generate_catalogue

    data = Path(args.data)
    shop = Shop(load_dir(data) if data.is_dir() else generate_catalogue(num_products=300, seed=0))
    goals = list(shop.goals.split("train"))[:args.goals]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    rows = []
    for name, mode, history_turns, state in VARIANTS:
        start = time.perf_counter()
        episodes, success = oracle_prompts(shop, goals, mode, history_turns, state)
        row = {"variant": name, "observation_mode": mode, "history_turns": history_turns, "state": state,
               "oracle_success": success, **conflicts(episodes),
               **token_costs(episodes[:args.token_goals], tokenizer, history_turns)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"\nOracle on {len(goals)} training goals of {shop.catalogue.name} ({describe_machine('cpu')})\n")
    print("| variant | conflicting prompts | oracle turns on them | mean prompt tokens | p95 | prefix reuse |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['conflicting_prompts']:,} of {r['distinct_prompts']:,} | "
              f"{r['turns_on_conflicting_prompts']:.1%} | {r['mean_prompt_tokens']:.0f} | {r['p95_prompt_tokens']} | "
              f"{r['prefix_reuse']:.0%} |")
    result = {"command": "python -m bench.prompts " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": describe_machine("cpu"), "catalogue": shop.catalogue.name, "goals": len(goals),
              "token_goals": min(args.token_goals, len(goals)), "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
