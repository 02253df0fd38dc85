"""The sft warm start: oracle demonstrations recorded exactly as a rollout would prompt them, the weights that
keep only successful ones, and the training stage that learns their actions; DAgger's relabelled turns."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from policy.prompts import Turn, encode_prompt
from stages.rollout import RolloutParams, episode_requests, rollout_stage
from stages.sft import demos_stage, sft_stage, unit_weights
from stages.train import TRAINING_STATE, TrainParams, action_logprobs, episode_batches, load_policy, \
    load_train_data
from storage.parquet import read_table
from webshop.env import Episode
from webshop.policies import NoisyOracle, goal_item_oracle, oracle_policy, rule_policy

PARAMS = RolloutParams(max_episode_steps=8, history_turns=1, max_prompt_tokens=1536)


@pytest.fixture(scope="module")
def demos(generated_shop, embedded_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    goals = list(generated_shop.goals.split("train"))[:6]
    folder = demos_stage(generated_shop, goals, PARAMS, embedded_model, run="s", inputs={"catalogue": "gen"},
                         root=root)
    return {"root": root, "goals": goals, "folder": folder,
            "episodes": read_table(folder / "episodes.parquet").to_pylist(),
            "turns": read_table(folder / "turns.parquet").to_pylist(),
            "weights": read_table(folder / "weights.parquet").to_pylist()}


def test_demonstrations_are_the_oracle_episodes_as_model_turns(demos, generated_shop, hf_engine):
    """Stepping a fresh episode with the oracle gives the recorded pages, prompts, actions and reward; each
    recorded reply is the action's exact tokens."""
    tok = hf_engine.tokenizer
    assert [e["goal_idx"] for e in demos["episodes"]] == demos["goals"]
    assert {e["stage"] for e in demos["episodes"]} == {"demos"} and {e["checkpoint"] for e in demos["episodes"]} \
        == {"oracle"}
    for e in demos["episodes"]:
        turns = sorted((t for t in demos["turns"] if t["episode_id"] == e["episode_id"]), key=lambda t: t["turn"])
        ep, memory, history = Episode(generated_shop, e["goal_idx"], max_steps=PARAMS.max_episode_steps), {}, []
        for t in turns:
            assert ep.observation() == t["observation"]
            assert t["prompt_ids"] == encode_prompt(tok, Turn.of(ep), history, PARAMS.prompt())
            action = oracle_policy(ep, memory)
            assert t["action"] == t["completion_text"] == action
            assert tok.decode(t["completion_ids"]) == action and t["completion_logprobs"] == [0.0] * len(
                t["completion_ids"])
            result = ep.step(action)
            assert result.info["valid"] == t["valid"]
            history.append((t["observation"], t["completion_text"]))
        assert ep.done == (e["end_reason"] in ("bought", "step_cap"))
        assert ep.state.reward == e["reward"] or e["end_reason"] != "bought"


def test_weights_keep_only_successful_demonstrations(demos):
    successes = {e["episode_id"] for e in demos["episodes"] if e["success"]}
    assert successes, "the oracle should buy the right product on some of these goals"
    assert {w["episode_id"] for w in demos["weights"]} == successes
    assert {w["weight"] for w in demos["weights"]} == {1.0}
    manifest = json.loads((demos["folder"] / "manifest.json").read_text())
    assert manifest["stage"] == "demos" and manifest["summary"]["engine"] == "oracle"


def test_done_demonstrations_are_reused(demos, generated_shop, embedded_model):
    mtime = (demos["folder"] / "manifest.json").stat().st_mtime_ns
    again = demos_stage(generated_shop, demos["goals"], PARAMS, embedded_model, run="s", inputs={"catalogue": "gen"},
                        root=demos["root"])
    assert again == demos["folder"] and (again / "manifest.json").stat().st_mtime_ns == mtime


def test_a_demonstration_longer_than_the_reply_budget_is_refused(demos, generated_shop, embedded_model, tmp_path):
    """A search the sampler would cut off at --max-new-tokens is refused before any table is written."""
    longest = max(len(t["completion_ids"]) for t in demos["turns"])
    short = RolloutParams(max_episode_steps=8, history_turns=1, max_new_tokens=longest - 1)
    with pytest.raises(ValueError, match=f"is {longest} tokens, over --max-new-tokens {longest - 1}"):
        demos_stage(generated_shop, demos["goals"], short, embedded_model, run="s", inputs={"catalogue": "gen"},
                    root=tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def _mean_action_logprob(checkpoint: Path, data) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for row in data.to_list():
            ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
            logp, _, _, _ = action_logprobs(model, ids, torch.ones_like(ids), [len(row["prompt_ids"])],
                                            [len(row["completion_ids"])], 1024)
            total, n = total + logp.sum().item(), n + logp.numel()
    return total / n


@pytest.mark.parametrize("model,learning_rate", [
    ("tiny_model", 1e-3),                                                  # the stage's mechanics, in seconds
    pytest.param("embedded_model", 1e-4, marks=pytest.mark.slow),          # the real model (3 minutes on 2 cores)
])
def test_sft_stage_learns_the_demonstrated_actions(demos, model, learning_rate, generated_shop, tmp_path, request):
    model = request.getfixturevalue(model)
    # Two short successful demonstrations keep this fast: without history their prompts are one page each.
    params = RolloutParams(max_episode_steps=8, history_turns=0)
    small = demos_stage(generated_shop, demos["goals"][:3], params, model, run="s2",
                        inputs={"catalogue": "gen"}, root=tmp_path)
    data = load_train_data(small / "turns.parquet", small / "weights.parquet")
    train = TrainParams(learning_rate=learning_rate, kl_coef=0.0, epochs=1, batch_episodes=1, dtype="float32",
                        gradient_checkpointing=False)
    folder = sft_stage(model, small, train, run="s2", root=tmp_path)
    assert folder.parent == tmp_path / "runs" / "s2" / "sft"
    episodes = len(set(data["episode_id"]))
    metrics = read_table(folder / "train_metrics.parquet").to_pylist()
    assert [m["step"] for m in metrics] == list(range(1, episodes + 1))  # one step per demonstration episode
    assert all(m["kl"] == 0.0 for m in metrics)                          # kl_coef 0: no reference forward
    summary = json.loads((folder / "manifest.json").read_text())["summary"]  # the warm start's cost, all steps
    assert summary["total_tokens"] == sum(m["tokens"] for m in metrics) > metrics[-1]["tokens"]
    assert summary["total_seconds"] == pytest.approx(sum(m["seconds"] for m in metrics), abs=0.01)
    assert summary["total_tokens_per_s"] == pytest.approx(summary["total_tokens"] / sum(m["seconds"] for m in metrics))
    before = _mean_action_logprob(model, data)
    after = _mean_action_logprob(folder / "checkpoint", data)
    assert after > before + 0.05, (before, after)

    # the warm start is a new starting model: trained against another reference it is not refused, and the
    # first iteration starts a fresh optimizer at step 0
    state = torch.load(folder / "checkpoint" / TRAINING_STATE, weights_only=False)
    assert state["stage"] == "sft"
    _, _, optimizer, step = load_policy(folder / "checkpoint", folder / "checkpoint", TrainParams(objective="apo"))
    assert step == 0 and not optimizer.state


def test_episode_batches_cover_every_row_once_in_whole_episodes():
    episode_ids = ["a", "a", "b", "c", "c", "c", "d"]
    assert episode_batches(episode_ids, TrainParams(batch_episodes=0), 0) == [[0, 1, 2, 3, 4, 5, 6]]
    for epoch in range(3):
        batches = episode_batches(episode_ids, TrainParams(batch_episodes=2), epoch)
        assert len(batches) == 2
        assert sorted(i for b in batches for i in b) == list(range(7))
        for b in batches:
            assert len({episode_ids[i] for i in b}) == 2
            assert all(episode_ids.count(episode_ids[i]) == sum(episode_ids[j] == episode_ids[i] for j in b)
                       for i in b)  # an episode's rows stay together
        assert batches == episode_batches(episode_ids, TrainParams(batch_episodes=2), epoch)  # deterministic
    orders = {tuple(map(tuple, episode_batches(episode_ids, TrainParams(batch_episodes=1), e))) for e in range(6)}
    assert len(orders) > 1  # reshuffled each epoch


def test_noisy_demonstrations_keep_the_oracles_recoveries_and_drop_its_mistakes(generated_shop, embedded_model,
                                                                                hf_engine, tmp_path):
    """DART: on the goal's item page some turns are another option click than the oracle's; those are played but
    not kept, and the turns after them are kept with the oracle's action from the state the mistake left (a stray
    or re-clicked option in the previous actions). A mistake leaves the goal's selections as they were, so no kept
    option click repeats the kept action before it (the pattern the first DART version taught). Every kept turn is
    the plain oracle's action on its state, no prompt carries two labels, and the oracle still buys the goal's
    product."""
    tok = hf_engine.tokenizer
    goals = list(generated_shop.goals.split("train"))[:30]
    noise, params = NoisyOracle(rate=0.5, seed=3), RolloutParams(max_episode_steps=15, history_turns=1)
    folder = demos_stage(generated_shop, goals, params, embedded_model, run="n", inputs={"catalogue": "gen"},
                         root=tmp_path, noise=noise)
    episodes = read_table(folder / "episodes.parquet").to_pylist()
    kept = {(t["episode_id"], t["turn"]): t for t in read_table(folder / "turns.parquet").to_pylist()}
    expected, mistakes, recoveries, rechosen = {}, 0, 0, 0
    for e in episodes:  # replay: the played actions, and the plain oracle's action on each state
        ep, memory, history, after_mistake = Episode(generated_shop, e["goal_idx"], max_steps=15), {}, [], False
        last_kept = None
        for turn in range(e["n_steps"]):
            oracle_action = oracle_policy(ep, copy.deepcopy(memory))
            played = noise.act(ep, memory)
            if noise.label(ep, memory, played) is None:
                assert ep.state.kind == "item" and ep.state.asin == ep.goal.asin
                assert played != oracle_action and played.startswith("click[") and played != "click[buy now]"
                wanted = ep.goal.goal_options
                wanted = set(wanted.values() if isinstance(wanted, dict) else wanted)
                chosen = {g: v for g, v in ep.state.options.items() if v in wanted}
                history.append((ep.observation(), played))
                ep.step(played)
                # the goal's values stay selected: nothing is displaced, at most a group it does not name is set
                assert all(ep.state.options.get(g) == v for g, v in chosen.items()), (chosen, played)
                mistakes, after_mistake = mistakes + 1, True
                continue
            assert played == oracle_action
            expected[(e["episode_id"], turn)] = (encode_prompt(tok, Turn.of(ep), history, params.prompt()), played)
            recoveries, after_mistake = recoveries + after_mistake, False
            on_item = ep.state.kind == "item" and ep.state.asin == ep.goal.asin
            rechosen += on_item and played == last_kept
            last_kept = played if on_item else None
            history.append((ep.observation(), played))
            ep.step(played)
    assert mistakes >= 5 and recoveries >= 5, (mistakes, recoveries)
    assert rechosen == 0
    assert kept.keys() == expected.keys()
    for key, (prompt, action) in expected.items():
        assert kept[key]["prompt_ids"] == prompt and kept[key]["completion_text"] == kept[key]["action"] == action
    labels = {}
    for t in kept.values():
        labels.setdefault(tuple(t["prompt_ids"]), set()).add(t["completion_text"])
    assert all(len(v) == 1 for v in labels.values())
    assert sum(e["success"] for e in episodes) >= len(goals) * 0.8
    plain = demos_stage(generated_shop, goals, params, embedded_model, run="n", inputs={"catalogue": "gen"},
                        root=tmp_path)
    # a mistake adds no oracle turn (nothing to undo), it changes what the turns after it show
    plain_turns = read_table(plain / "turns.parquet").to_pylist()
    assert plain != folder and len(plain_turns) == len(kept)
    plain_prompts = {tuple(t["prompt_ids"]) for t in plain_turns}
    assert sum(tuple(t["prompt_ids"]) not in plain_prompts for t in kept.values()) >= recoveries


def test_relabelled_turns_are_the_oracles_labels_of_the_policys_own_states(generated_shop, embedded_model,
                                                                           tiny_model, hf_engine, tmp_path):
    """The rule policy (search, open the first result, buy) plays; its turns on the goal's own item page are kept,
    each with the policy's state as the prompt, the oracle's action as the reply (the goal's options first, then
    buy) and the rule's in `action`; training on them raises the replies' probability."""
    tok = hf_engine.tokenizer
    params = RolloutParams(max_episode_steps=8, history_turns=0)
    goals = list(generated_shop.goals.split("train"))[:40]
    folder = rollout_stage(lambda _: SimpleNamespace(name="rule", tokenizer=tok), generated_shop,
                           episode_requests(goals, 1), params, run="r", stage="relabel", iteration=None,
                           checkpoint="rule", inputs={"catalogue": "gen"}, root=tmp_path, demonstrator=rule_policy,
                           labeller=goal_item_oracle, extra_tables=lambda rows: {"weights": unit_weights(rows)})
    episodes = read_table(folder / "episodes.parquet").to_pylist()
    kept = {(t["episode_id"], t["turn"]): t for t in read_table(folder / "turns.parquet").to_pylist()}
    expected = {}
    for e in episodes:  # replay each episode with the rule; the oracle's action on the goal's page
        ep = Episode(generated_shop, e["goal_idx"], max_steps=params.max_episode_steps)
        for turn in range(e["n_steps"]):
            action = rule_policy(ep, {})
            on_goal_page = ep.state.kind == "item" and ep.state.asin == ep.goal.asin
            if on_goal_page:
                expected[(e["episode_id"], turn)] = (encode_prompt(tok, Turn.of(ep), [], params.prompt()),
                                                     oracle_policy(ep, {}), action)
            ep.step(action)
    assert len(expected) >= 3, "the rule should reach some goals' own pages"
    assert kept.keys() == expected.keys()
    for key, (prompt, label, action) in expected.items():
        t = kept[key]
        assert t["prompt_ids"] == prompt and t["page"] == "item"
        assert t["completion_text"] == label and tok.decode(t["completion_ids"]) == label
        assert t["action"] == action == "click[buy now]" and label.startswith("click[")
    assert {w["episode_id"] for w in read_table(folder / "weights.parquet").to_pylist()} == \
        {e["episode_id"] for e in episodes}

    data = load_train_data(folder / "turns.parquet", folder / "weights.parquet")
    train = TrainParams(learning_rate=1e-3, kl_coef=0.0, epochs=1, batch_episodes=4, dtype="float32",
                        gradient_checkpointing=False)
    trained = sft_stage(tiny_model, folder, train, run="r", root=tmp_path)
    assert _mean_action_logprob(trained / "checkpoint", data) > _mean_action_logprob(tiny_model, data) + 0.05
