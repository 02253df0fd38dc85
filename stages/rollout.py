"""Rollouts: multi-turn episodes of a model against WebShop, every live episode stepped together.

One code path serves A*-PO stage 1 (`reference`: k episodes per goal from the frozen reference model), the
per-iteration `rollout` (n episodes per goal from the current checkpoint) and `eval` (greedy). Each turn the
loop builds the prompt of every live episode, calls the engine once for all of them, parses the first action
of each reply, steps the batched environment and appends the exact ids to the episode's turns.

Nothing here knows about Prefect; the stage functions take plain values and return the output folder.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from policy.engines import Completion, Sampling
from policy.prompts import PromptConfig, Turn, encode_prompt, parse_action
from storage.faults import fault_point
from storage.layout import root_relative
from storage.parquet import write_table
from storage.stages import code_version, reuse_done, stage_dir, stage_key, stage_output
from storage.tables import EPISODES_SCHEMA, TURNS_SCHEMA, to_table
from webshop.env import OBSERVATION_MODES, BatchEnv, Shop
from webshop.policies import Labeller

log = logging.getLogger(__name__)
REWARD_PARTS = ("r_type", "r_att", "r_option", "r_price")


@dataclass(frozen=True)
class RolloutParams:
    temperature: float = 0.9
    """Sampling temperature; 0 is greedy (eval)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = Sampling.max_new_tokens
    """Cap on one reply's tokens; a demonstration longer than this is refused (the trained policy could never
    finish it)."""
    max_episode_steps: int = 15
    """Environment steps before an episode is cut (reward 0)."""
    observation_mode: str = "text"
    """Page text: text (upstream's [SEP]-joined page), text_rich (one element a line, clicked ones marked) or
    compact (ours: one element a line, no repeated instruction, clickables in click form; the prompt then lists
    no actions: a third fewer prompt tokens, but a weaker warm start on this model, README)."""
    history_turns: int = 0
    """Previous turns (page and reply) kept in the prompt; the turn itself always lists the previous actions
    (bench/prompts: with them, no oracle prompt is ambiguous at 0, and 2 costs 1.7x the tokens)."""
    max_prompt_tokens: int = 1536
    """Prompt budget; history is dropped from the oldest turn to fit."""
    seed: int = 0
    """Sampling seed of the stage."""

    def check(self) -> None:
        if self.observation_mode not in OBSERVATION_MODES:
            raise ValueError(f"--observation-mode {self.observation_mode!r} is not one of {', '.join(OBSERVATION_MODES)}")
        if self.history_turns < 0:
            raise ValueError(f"--history-turns must be >= 0, got {self.history_turns}")

    def prompt(self) -> PromptConfig:
        return PromptConfig(self.history_turns, self.max_prompt_tokens)

    def prompt_format(self) -> dict:
        """What a policy trained on these prompts has learned to read (recorded in its checkpoint)."""
        return {"observation_mode": self.observation_mode, "history_turns": self.history_turns}


PROMPT_RECORD = "prompt.json"  # in a checkpoint: the prompt format of the data it was trained on


def check_prompt_format(checkpoint, params: RolloutParams) -> None:
    """Refuse to sample from a checkpoint with prompts of another format than it was trained on (a policy trained
    on compact pages reads text pages as noise): one line naming both and the flags that match. A checkpoint
    without the record (a base model, a Hugging Face folder) is not checked."""
    path = Path(checkpoint) / PROMPT_RECORD
    if not path.is_file():
        return
    trained, asked = json.loads(path.read_text(encoding="utf-8")), params.prompt_format()
    if trained != asked:
        raise ValueError(f"{checkpoint} was trained on {trained['observation_mode']} prompts with history "
                         f"{trained['history_turns']}, not {asked['observation_mode']} with history "
                         f"{asked['history_turns']}: pass --observation-mode {trained['observation_mode']} "
                         f"--history-turns {trained['history_turns']}")


@dataclass
class _Live:
    """One episode's running record."""
    goal_idx: int
    sample_idx: int
    turns: list[dict] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    end_reason: str | None = None


def run_episodes(engine, shop: Shop, requests: list[tuple[int, int]], params: RolloutParams,
                 progress: bool = False, demonstrator=None, labeller: Labeller | None = None,
                 stage: str = "rollout") -> tuple[list[dict], list[dict]]:
    """Play one episode per (goal_idx, sample_idx) request. Returns (episode rows, turn rows) without the
    run/stage columns; `episode_id` is filled in by the caller (it holds those).

    With a `demonstrator` (a `webshop.policies` policy) the scripted policy acts instead of the model and its
    actions are recorded as the model's replies (`demonstration`); `engine` then only lends its tokenizer.
    That is how oracle demonstrations become training rows with exactly the prompts a rollout would build.
    With a `labeller` (a `webshop.policies.Labeller`: DAgger's expert `goal_item_oracle`, or DART's
    `NoisyOracle.label` beside its demonstrator) the policy acts as usual, and the turns kept are those the
    labeller labels, given the state and the action played, each with the labeller's action as its reply
    (`completion_*`) and the policy's own in `action`: training rows on the states the policy visits. The ones
    where the policy already did right are kept too: trained on the corrections alone, the warm start saw almost
    no state where buying is right (5 of 148 rows) and stopped buying.
    `stage` names the fault point passed after each turn (storage/faults.py)."""
    env = BatchEnv(shop, params.observation_mode, params.max_episode_steps)
    env.reset([g for g, _ in requests])
    live = [_Live(g, s) for g, s in requests]
    memories = [dict() for _ in requests]
    bar = tqdm(total=len(requests), desc="episodes", unit="ep", disable=not progress, leave=False)
    turn = 0
    while env.live():
        positions, prompts, observations = [], [], {}
        for i in env.live():
            ep = env.episodes[i]
            turn_view = Turn.of(ep)
            observations[i] = turn_view.observation
            ids = encode_prompt(engine.tokenizer, turn_view, live[i].history, params.prompt())
            if ids is None:  # even the current turn alone does not fit: end it, keep what it did
                ep.done, live[i].end_reason = True, "context"
                bar.update()
                continue
            positions.append(i)
            prompts.append(ids)
        if not positions:
            break
        if demonstrator is not None:
            completions = [demonstration(engine.tokenizer, demonstrator(env.episodes[i], memories[i]),
                                         params.max_new_tokens) for i in positions]
        else:
            sampling = Sampling(params.temperature, params.top_p, params.max_new_tokens, params.seed * 1000 + turn)
            try:
                completions = engine.generate(prompts, sampling)
            except Exception as e:  # e.g. out of KV cache: finished episodes are kept, the live ones end here
                log.warning("engine %s failed on turn %d (%s: %s); %d live episodes end with engine_error", engine.name,
                            turn, type(e).__name__, str(e).splitlines()[0] if str(e) else "", len(positions))
                for i in positions:
                    env.episodes[i].done, live[i].end_reason = True, "engine_error"
                bar.update(len(positions))
                break
        actions = {}
        for i, ids, c in zip(positions, prompts, completions):
            ep = env.episodes[i]
            action = parse_action(c.text) or ""
            actions[i] = action
            row = {"turn": turn, "page": ep.state.kind, "observation": observations[i], "prompt_ids": ids,
                   "completion_ids": c.token_ids, "completion_logprobs": c.logprobs, "completion_text": c.text,
                   "action": action}
            if labeller is not None:
                label = labeller(ep, memories[i], action)
                row["label"] = None if label is None else demonstration(engine.tokenizer, label, params.max_new_tokens)
            live[i].turns.append(row)
        for i, result in env.step(actions).items():
            ep, rec = env.episodes[i], live[i]
            rec.turns[-1]["valid"] = result.info["valid"]
            rec.history.append((rec.turns[-1]["observation"], rec.turns[-1]["completion_text"]))
            if result.done:
                rec.end_reason = result.info["end_reason"]
                bar.update()
        turn += 1
        fault_point(f"{stage}:turn")
    bar.close()
    episodes, turns = _rows(env, live)
    if labeller is not None:
        turns = [[_relabelled(t) for t in ep_turns if t["label"] is not None] for ep_turns in turns]
    return episodes, turns


def _relabelled(turn: dict) -> dict:
    """A relabelled turn: the labeller's reply as the completion (what training imitates), the policy's action
    kept in `action` (what the environment received)."""
    label = turn.pop("label")
    return {**turn, "completion_ids": label.token_ids, "completion_logprobs": label.logprobs,
            "completion_text": label.text}


def demonstration(tokenizer, action: str, max_new_tokens: int) -> Completion:
    """A scripted action as a model reply: its tokens, each with probability 1 under the demonstrator.

    Refused when longer than the reply budget: the policy would learn a reply its sampler always cuts off (the
    warm start of the 48-token default lost 11 of 200 test episodes to unfinished searches)."""
    ids = tokenizer.encode(action, add_special_tokens=False)
    if len(ids) > max_new_tokens:
        shown = action if len(action) <= 60 else action[:60] + "..."
        raise ValueError(f"demonstration {shown!r} is {len(ids)} tokens, over --max-new-tokens "
                         f"{max_new_tokens}: a policy trained on it could never finish it; raise --max-new-tokens")
    return Completion(ids, [0.0] * len(ids), action, "stop")


def _rows(env: BatchEnv, live: list[_Live]) -> tuple[list[dict], list[dict]]:
    episodes, turns = [], []
    for ep, rec in zip(env.episodes, live):
        info = ep.state.reward_info if rec.end_reason == "bought" else None
        reward = ep.state.reward if rec.end_reason == "bought" else 0.0
        episodes.append({
            "goal_idx": rec.goal_idx, "sample_idx": rec.sample_idx, "reward": reward,
            **{p: (info or {}).get(p) for p in REWARD_PARTS}, "success": reward == 1.0,
            "n_steps": ep.steps, "end_reason": rec.end_reason,
            "format_errors": sum(t["action"] == "" for t in rec.turns),
            "invalid_actions": sum(not t["valid"] for t in rec.turns),
            "prompt_tokens": sum(len(t["prompt_ids"]) for t in rec.turns),
            "completion_tokens": sum(len(t["completion_ids"]) for t in rec.turns)})
        turns.append(rec.turns)
    return episodes, turns


def episode_requests(goals: list[int], samples: int | list[int]) -> list[tuple[int, int]]:
    """(goal_idx, sample_idx) pairs: `samples` episodes of every goal, or samples[i] of goals[i]."""
    counts = samples if isinstance(samples, list) else [samples] * len(goals)
    if len(counts) != len(goals):
        raise ValueError(f"{len(counts)} sample counts for {len(goals)} goals")
    return [(g, s) for g, n in zip(goals, counts) for s in range(n)]


def rollout_stage(engine_factory, shop: Shop, requests: list[tuple[int, int]], params: RolloutParams, *, run: str,
                  stage: str, iteration: int | None, checkpoint: str, inputs: dict[str, str],
                  root=None, progress: bool = True, force: bool = False, cached_only: bool = False,
                  extra_tables=None, demonstrator=None, labeller: Labeller | None = None,
                  shard: int | None = None):
    """Run (or reuse) one rollout stage; returns its folder with episodes.parquet, turns.parquet, manifest.

    `engine_factory(checkpoint)` is only called when the stage is not done yet (loading an engine costs
    tens of seconds). `inputs` names what the output depends on besides the parameters (catalogue, goal
    set, checkpoint key) and goes into the stage key with the code version. `force` recomputes a done stage
    (the new folder replaces the old one atomically); `cached_only` raises instead of computing a stage that is not
    done (a replay must not re-run it). `extra_tables(episode_rows) -> {name: table}` adds
    tables to the same folder (the eval stage's summary); `demonstrator` plays scripted episodes (the sft
    stage's demonstrations, see `run_episodes`), `labeller` relabels the policy's turns (the relabel stage).
    `shard`: the requests are that shard of the stage's
    (stages/shards.py): the folder is under `<stage>-shards/`, the rows are the stage's own.
    """
    key_params = {"stage": stage, **asdict(params)}
    key = stage_key({**key_params, "requests": requests}, {**inputs, "checkpoint": root_relative(checkpoint, root)},
                    code_version("webshop", "policy", "stages/rollout.py", "storage/tables.py"))
    folder = stage_dir(run, stage if shard is None else shard_stage_name(stage), key, iteration, root)
    if reuse_done(folder, stage, force, cached_only):
        return folder
    engine = engine_factory(checkpoint)
    start, stats_before = time.perf_counter(), engine_stats(engine)
    episodes, turns = run_episodes(engine, shop, requests, params, progress, demonstrator, labeller, stage)
    seconds = time.perf_counter() - start
    engine_work = {k: v - stats_before[k] for k, v in engine_stats(engine).items()}
    episode_rows, turn_rows = [], []
    for ep, ep_turns in zip(episodes, turns):
        episode_id = f"{run}/{stage}/{'' if iteration is None else iteration}/{ep['goal_idx']}/{ep['sample_idx']}"
        episode_rows.append({"episode_id": episode_id, "run": run, "iteration": iteration, "stage": stage,
                             "checkpoint": checkpoint, "seed": params.seed, **ep})
        turn_rows += [{"episode_id": episode_id, **t} for t in ep_turns]
    summary = {"goals": len({g for g, _ in requests}), "episodes": len(episode_rows), "turns": len(turn_rows),
               "seconds": round(seconds, 2), "engine": engine.name, **episode_summary(episode_rows, engine_work)}
    manifest = {"stage": stage, "run": run, "iteration": iteration, "key": key, "params": key_params,
                "inputs": {**inputs, "checkpoint": checkpoint}, "summary": summary,
                **({} if shard is None else {"shard": shard})}
    with stage_output(folder, manifest) as tmp:
        write_table(to_table(episode_rows, EPISODES_SCHEMA), tmp / "episodes.parquet")
        write_table(to_table(turn_rows, TURNS_SCHEMA), tmp / "turns.parquet")
        for name, table in (extra_tables(episode_rows) if extra_tables else {}).items():
            write_table(table, tmp / f"{name}.parquet")
    hits = summary["prefix_cache_hit_rate"]
    log.info("%s: %d episodes, %d turns in %.1f s, mean reward %.3f, prefix-cache hits %s -> %s", stage,
             len(episode_rows), len(turn_rows), seconds, summary["mean_reward"],
             "n/a" if hits is None else f"{hits:.0%} of prompt tokens", folder)
    return folder


def episode_summary(episode_rows: list[dict], engine_work: dict[str, float]) -> dict:
    """What a stage's manifest says of its episodes and of the engine's work on them (`engine_stats` differences;
    a sharded stage's merge passes its shards' sums)."""
    return {"mean_reward": sum(e["reward"] for e in episode_rows) / max(1, len(episode_rows)),
            "completion_tokens": sum(e["completion_tokens"] for e in episode_rows), "engine_stats": engine_work,
            "prefix_cache_hit_rate": (engine_work["prefix_cache_hit_tokens"] / engine_work["prompt_tokens"]
                                      if engine_work.get("prompt_tokens") else None),
            "end_reasons": {r: sum(e["end_reason"] == r for e in episode_rows)
                            for r in sorted({e["end_reason"] for e in episode_rows})}}


def shard_stage_name(stage: str) -> str:
    """The folder of a sharded stage's shards (stages/shards.py) beside the stage's own."""
    return f"{stage}-shards"


def engine_stats(engine) -> dict[str, float]:
    """The engine's counters (vllm: prompt tokens, prefix-cache hits, prefill/decode seconds); {} without."""
    return engine.stats() if hasattr(engine, "stats") else {}


def reference_samples(v_star_samples: int, adaptive: bool, position: int, total: int) -> int:
    """Reference samples for the goal at `position` of the run's `total` training goals (in training order).

    Fixed: k for every goal. Adaptive (the seed's schedule, 8 -> 4 -> 2 for k = 8): the first third of the
    goals get k, the second third k // 2, the rest k // 4, never fewer than 2 (V* needs a spread).
    """
    if not adaptive:
        return v_star_samples
    third = min(2, 3 * position // max(1, total))
    return max(2, v_star_samples >> third)
