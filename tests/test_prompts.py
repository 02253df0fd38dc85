"""The agent's prompt (the model's chat template, one worked example, a bounded history) and reply parsing.

Prompts are built from real episodes of the generated shop and encoded with the embedded model's own tokenizer.
"""
from __future__ import annotations

import random
import string

import pytest
from transformers import AutoTokenizer

from policy.prompts import (CLICK_ON_PAGE, EXAMPLE_REPLY, SYSTEM_PROMPT, PromptConfig, Turn, encode_prompt,
                            example_turn, format_actions, parse_action, turn_message)
from webshop.env import Episode

NAV = {"back to search", "next >", "< prev", "search"}


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    return AutoTokenizer.from_pretrained(embedded_model)


# ---------------------------------------------------------------------------------------------------------
# parse_action
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, action", [
    ("search[red shoes]", "search[red shoes]"),
    ("click[buy now]", "click[buy now]"),
    # the first action wins
    ("search[red shoes] click[buy now]", "search[red shoes]"),
    ("click[b0abc12345]\nsearch[red shoes]", "click[b0abc12345]"),
    # reasoning (even with brackets of its own) before the action is allowed; text after it is ignored
    ("I should look for the shoes first. search[red shoes]", "search[red shoes]"),
    ("Thought: [the page has a search box]\nAction: search[red shoes] because it matches", "search[red shoes]"),
    ("**click[features]**.", "click[features]"),
    # lenient about the name's case and one space before the bracket; the argument is kept as written
    ("Click [back to search]", "click[back to search]"),
    ("SEARCH[Red Shoes]", "search[Red Shoes]"),
    ("search [red shoes]", "search[red shoes]"),
    ("click[< prev]", "click[< prev]"),
    ("search[café crème 🛒]", "search[café crème 🛒]"),
    # a newline inside the brackets disqualifies that candidate, not the whole reply
    ("search[red\nshoes] click[next >]", "click[next >]"),
])
def test_parse_action_finds_the_first_action(reply, action):
    assert parse_action(reply) == action


def _junk(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits + " .,;:!?-_()\n") for _ in range(n))


@pytest.mark.parametrize("reply", [
    "",
    "   \n\t ",
    "I am not sure what to do here.",
    "buy now",
    "search red shoes",
    "search(red shoes)",
    "click[",
    "search[red shoes",
    "click[buy now\n]",
    "search[red\nshoes]",
    "ñandú 🛒 检索【鞋子】 клик[купить]",
    "search【red shoes】",
    "search" + "[" * 50,
    "]" * 50 + "click" + "[x" * 50,
    _junk(10_000, 0),
    "search[" + "a" * 10_000,
], ids=lambda r: repr(r[:30]) + (f"...({len(r)} chars)" if len(r) > 30 else ""))
def test_parse_action_none_without_an_action(reply):
    assert parse_action(reply) is None


def test_parse_action_finds_an_action_after_10kb_of_junk():
    assert parse_action(_junk(10_000, 1) + " click[buy now] " + _junk(100, 2)) == "click[buy now]"


@pytest.mark.parametrize("reply", ["search[a [b] c]", "click[x [y]]", "search[[red shoes]]", "click[[b]"])
def test_parse_action_never_returns_nested_brackets(reply):
    action = parse_action(reply)
    if action is not None:
        name, arg = action.split("[", 1)
        assert name in ("search", "click") and arg.endswith("]")
        assert "[" not in arg and "]" not in arg[:-1], action


# ---------------------------------------------------------------------------------------------------------
# prompts from real episodes
# ---------------------------------------------------------------------------------------------------------
def walk(shop, goal_idx: int) -> list[tuple[str, dict, str]]:
    """(observation, available actions, reply taken) of four turns: search page, results, item, sub-page."""
    ep = Episode(shop, goal_idx, max_steps=100)
    query = " ".join(ep.goal.instruction_text.split()[:6])
    turns = []
    for _ in range(3):
        obs, available = ep.observation(), ep.available_actions()
        if available["has_search_bar"]:
            reply = f"search[{query}]"
        else:
            targets = [c for c in available["clickables"] if c not in NAV]
            reply = f"click[{'description' if 'description' in targets else targets[0]}]"
        turns.append((obs, available, reply))
        assert ep.step(reply).info["valid"], reply
    turns.append((ep.observation(), ep.available_actions(), ""))
    return turns


@pytest.fixture(scope="module")
def episode(generated_shop):
    """Goal 0 walked to a sub-page: the last turn is current, the three before it are the history."""
    turns = walk(generated_shop, 0)
    assert [t[1]["has_search_bar"] for t in turns] == [True, False, False, False]
    return generated_shop.goal(0).instruction_text, turns


def history_of(turns, replies=None):
    replies = replies or [reply for _, _, reply in turns[:-1]]
    return [(obs, reply) for (obs, _, _), reply in zip(turns[:-1], replies)]


# Replies that are unique in the whole prompt, so their presence tells which history turns were kept.
MARKERS = ["search[marker zero qqq]", "click[marker one vvv]", "click[marker two kkk]"]


def test_format_actions_lists_search_and_clicks():
    assert format_actions({"has_search_bar": True, "clickables": ["search"]}) == "search[...]"
    assert (format_actions({"has_search_bar": False, "clickables": ["back to search", "b0abc", "buy now"]})
            == "click[back to search], click[b0abc], click[buy now]")


def test_prompt_uses_the_chat_template(tokenizer, episode):
    instruction, turns = episode
    obs, available, _ = turns[1]  # the results page: many clickables
    ids = encode_prompt(tokenizer, Turn(instruction, obs, available), [], PromptConfig())
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    # the generation prompt of this model's template closes the prompt
    one = [{"role": "user", "content": "x"}]
    closed = tokenizer.apply_chat_template(one, tokenize=False)
    opened = tokenizer.apply_chat_template(one, tokenize=False, add_generation_prompt=True)
    assert opened.startswith(closed) and len(opened) > len(closed)
    assert text.endswith(opened[len(closed):])
    # system prompt, then the worked example and its reply, then the current turn
    positions = [text.index(SYSTEM_PROMPT), text.index(example_turn("text")), text.index(EXAMPLE_REPLY),
                 text.index(f"Instruction: {instruction}"), text.index(f"Page: {obs}")]
    assert positions == sorted(positions)
    clicks = [c for c in available["clickables"] if c != "search"]
    assert len(clicks) >= 5
    for c in clicks:
        assert f"click[{c}]" in text
    assert text.rstrip().endswith(opened[len(closed):].rstrip())
    assert "search[...]" not in text[text.index(f"Page: {obs}"):]  # no search box on a results page
    assert turn_message(Turn(instruction, obs, available)) in text


def test_first_turn_offers_search(tokenizer, episode):
    instruction, turns = episode
    obs, available, _ = turns[0]
    text = tokenizer.decode(encode_prompt(tokenizer, Turn(instruction, obs, available), [], PromptConfig()))
    assert text[text.index(f"Instruction: {instruction}"):].count("Actions: search[...]") == 1


def present(tokenizer, ids) -> list[bool]:
    text = tokenizer.decode(ids)
    return [m in text for m in MARKERS]


@pytest.mark.parametrize("history_turns, kept", [
    (0, [False, False, False]),
    (1, [False, False, True]),
    (2, [False, True, True]),
    (3, [True, True, True]),
    (5, [True, True, True]),
])
def test_history_is_limited_to_the_last_turns(tokenizer, episode, history_turns, kept):
    instruction, turns = episode
    obs, available, _ = turns[-1]
    config = PromptConfig(history_turns=history_turns, max_prompt_tokens=100_000)
    ids = encode_prompt(tokenizer, Turn(instruction, obs, available), history_of(turns, MARKERS), config)
    assert present(tokenizer, ids) == kept


@pytest.mark.parametrize("history_turns, n_history", [(2, 1), (3, 2), (4, 3), (5, 3), (8, 2)])
def test_short_history_is_kept_whole(tokenizer, episode, history_turns, n_history):
    """Fewer past turns than `history_turns`: all of them are in the prompt."""
    instruction, turns = episode
    obs, available, _ = turns[-1]
    history = history_of(turns, MARKERS)[-n_history:]
    config = PromptConfig(history_turns=history_turns, max_prompt_tokens=100_000)
    ids = encode_prompt(tokenizer, Turn(instruction, obs, available), history, config)
    assert present(tokenizer, ids) == [False] * (3 - n_history) + [True] * n_history


def test_oldest_turns_are_dropped_to_fit(tokenizer, episode):
    instruction, turns = episode
    obs, available, _ = turns[-1]
    history = history_of(turns, MARKERS)

    def encode(hist, budget=100_000):  # history_turns = the turns given: only the budget drops any
        config = PromptConfig(history_turns=len(hist), max_prompt_tokens=budget)
        return encode_prompt(tokenizer, Turn(instruction, obs, available), hist, config)

    full, two, one, none = encode(history), encode(history[1:]), encode(history[2:]), encode([])
    assert len(none) < len(one) < len(two) < len(full)
    assert encode(history, len(full)) == full
    # one token short: the oldest turn goes, the two newest stay
    assert encode(history, len(full) - 1) == two
    assert present(tokenizer, two) == [False, True, True]
    # a budget between: only the newest turn fits
    for budget in (len(two) - 1, len(one), (len(one) + len(two)) // 2):
        ids = encode(history, budget)
        assert ids == one and len(ids) <= budget
        assert present(tokenizer, ids) == [False, False, True]
    # no history fits, the current turn does
    assert encode(history, len(one) - 1) == none
    assert encode(history, len(none)) == none
    # the current turn alone does not fit
    assert encode(history, len(none) - 1) is None
    assert encode([], len(none) - 1) is None
    assert encode(history, 10) is None


def results_pages(shop, goal_idx: int, n: int) -> tuple[str, list[tuple[str, dict]]]:
    """The first `n` result pages of a search for the start of the goal's instruction."""
    ep = Episode(shop, goal_idx, max_steps=100)
    instruction = ep.goal.instruction_text
    assert ep.step(f"search[{' '.join(instruction.split()[:5])}]").info["valid"]
    pages = [(ep.observation(), ep.available_actions())]
    for _ in range(n - 1):
        assert ep.step("click[next >]").info["valid"]
        pages.append((ep.observation(), ep.available_actions()))
    return instruction, pages


def test_default_budget_drops_results_pages(tokenizer, generated_shop):
    """Real long pages under the default budget: three full result pages do not fit 1,536 tokens together."""
    assert PromptConfig().history_turns == 0  # the default shows no past pages: the turn lists past actions
    config = PromptConfig(history_turns=2)
    assert config.max_prompt_tokens == 1536
    for goal_idx in range(20):
        instruction, pages = results_pages(generated_shop, goal_idx, 3)
        history = [(pages[0][0], MARKERS[1]), (pages[1][0], MARKERS[2])]
        obs, available = pages[2]
        unbounded = encode_prompt(tokenizer, Turn(instruction, obs, available), history,
                                  PromptConfig(history_turns=2, max_prompt_tokens=100_000))
        if len(unbounded) > config.max_prompt_tokens:  # the budget has to bite for this test to mean anything
            break
    else:
        raise AssertionError("no goal among the first 20 has three result pages over the default budget")
    assert len({obs for obs, _ in pages}) == 3
    ids = encode_prompt(tokenizer, Turn(instruction, obs, available), history, config)
    assert ids is not None and len(ids) <= config.max_prompt_tokens
    assert present(tokenizer, ids) == [False, False, True]
    assert f"Page: {obs}" in tokenizer.decode(ids)


# ---------------------------------------------------------------------------------------------------------
# what the turn carries: previous actions, selected options, why the last action did nothing
# ---------------------------------------------------------------------------------------------------------
def option_goal(shop) -> int:
    """A goal whose product has at least two option groups (so an item page can be seen before and after)."""
    return next(g for g in range(len(shop.goals)) if len(shop.catalogue.product(shop.goal(g).asin).options) >= 2)


def test_turn_lists_actions_marks_selected_options_and_says_why_an_action_did_nothing(generated_shop):
    ep = Episode(generated_shop, option_goal(generated_shop), max_steps=100)
    first = turn_message(Turn.of(ep))
    assert "Previous actions: none" in first and "did nothing" not in first
    assert ep.step(f"search[{ep.goal.instruction_without_price}]").info["valid"]
    assert ep.step(f"click[{ep.goal.asin.lower()}]").info["valid"]
    before = Turn.of(ep)
    group, values = next(iter(ep.product.options.items()))
    assert ep.step(f"click[{values[0]}]").info["valid"]
    after = Turn.of(ep)
    # text mode: the page reads the same before and after the click; the turn does not
    assert before.observation == after.observation and turn_message(before) != turn_message(after)
    assert after.selected == (values[0],) and f"click[{values[0]}] (selected)" in turn_message(after)
    assert f"click[{values[0]}] (selected)" not in turn_message(before)
    assert (f"Previous actions: search[{ep.goal.instruction_without_price}]; click[{ep.goal.asin.lower()}]; "
            f"click[{values[0]}]\n") in turn_message(after)
    # an invalid action: the page is unchanged, the turn says so and why; a valid one clears the line
    result = ep.step("click[no such button]")
    assert not result.info["valid"] and result.observation == after.observation
    message = turn_message(Turn.of(ep))
    assert "Last action click[no such button] did nothing: 'no such button' is not clickable on this page" in message
    assert message.index("Previous actions") < message.index("did nothing") < message.index("Page: ")
    ep.step("I would rather not")  # no action in the reply: the rollout passes ""
    ep.step("")
    assert "Last action (no action) did nothing: no action" in turn_message(Turn.of(ep))
    assert "; (no action)\n" in turn_message(Turn.of(ep))
    assert ep.step("click[< prev]").info["valid"] and "did nothing" not in turn_message(Turn.of(ep))


def test_compact_turns_leave_the_actions_to_the_page(tokenizer, generated_shop):
    """compact: the page lists the clicks and marks the selections, so the Actions line is one fixed hint, the
    example is a compact page too, and the prompt is shorter than text's on the same state."""
    ep, text = Episode(generated_shop, option_goal(generated_shop), "compact", 100), None
    assert "[SEP]" not in example_turn("compact") and example_turn("compact").endswith("Actions: search[...]")
    for action in (f"search[{ep.goal.instruction_without_price}]", f"click[{ep.goal.asin.lower()}]"):
        assert ep.step(action).info["valid"]
        text = Episode(generated_shop, ep.goal_idx, "text", 100)
        for a in ep.actions:
            text.step(a)
        turn = Turn.of(ep)
        assert turn.mode == "compact" and turn_message(turn).endswith(f"\nActions: {CLICK_ON_PAGE}")
        compact_ids, text_ids = (encode_prompt(tokenizer, Turn.of(e), [], PromptConfig()) for e in (ep, text))
        assert len(compact_ids) < len(text_ids)
    value = next(iter(ep.product.options.values()))[0]
    assert ep.step(f"click[{value}]").info["valid"]
    assert f"\n[{value}] (selected)\n" in turn_message(Turn.of(ep))


def test_consecutive_prompts_of_an_episode_share_everything_before_the_page(tokenizer, generated_shop):
    """Stable prefix: what repeats (system text, example, instruction, the growing action list) comes before the
    page, so each turn's prompt starts with the previous turn's prompt up to the end of its action list."""
    ep = Episode(generated_shop, option_goal(generated_shop), max_steps=100)
    actions = [f"search[{ep.goal.instruction_without_price}]", f"click[{ep.goal.asin.lower()}]", "click[description]",
               "click[< prev]"]
    prompts = []
    for action in actions:
        prompts.append(tokenizer.decode(encode_prompt(tokenizer, Turn.of(ep), [], PromptConfig())))
        assert ep.step(action).info["valid"]
    for n, (earlier, later) in enumerate(zip(prompts[1:], prompts[2:]), start=1):
        head = earlier[:earlier.rindex("\nPage: ")]  # the current turn's page (the example has one too)
        assert head.endswith("Previous actions: " + "; ".join(actions[:n]))
        assert later.startswith(head)


@pytest.mark.parametrize("mode", ["text", "compact"])
def test_oracle_demonstrations_are_learnable_on_every_training_goal(real_shop, embedded_model, mode):
    """Over the oracle's episodes on all training goals, no two identical prompts (default settings, and the
    compact page) carry different oracle actions; in text mode the page alone (the prompt before the turn
    carried state) does: an item page reads the same before and after an option is clicked. And every oracle
    action fits the default reply budget (with 48 tokens, 14% of the searches could not be finished by the
    policy that learned them)."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from policy.prompts import build_messages
    from stages.rollout import RolloutParams
    from webshop.env import BatchEnv
    from webshop.policies import oracle_policy

    params = RolloutParams()
    assert (params.observation_mode, params.history_turns) == ("text", 0)
    goals = list(real_shop.goals.split("train"))
    assert len(goals) == 5410
    env = BatchEnv(real_shop, mode, params.max_episode_steps)
    env.reset(goals)
    memories = [{} for _ in goals]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    action_tokens = {}
    with_state, page_only = {}, {}
    conflicts_with_state, conflicts_page_only = [], 0
    while env.live():
        actions = {}
        for i in env.live():
            turn = Turn.of(env.episodes[i])
            actions[i] = oracle_policy(env.episodes[i], memories[i])
            key = build_messages(turn, [])[-1]["content"]  # history_turns 0: the rest is the same for every prompt
            if with_state.setdefault(key, actions[i]) != actions[i]:
                conflicts_with_state.append((key, with_state[key], actions[i]))
            bare = turn_message(replace(turn, selected=(), previous_actions=(), invalid_reason=None))
            conflicts_page_only += page_only.setdefault(bare, actions[i]) != actions[i]
            if actions[i] not in action_tokens:
                action_tokens[actions[i]] = len(tokenizer.encode(actions[i], add_special_tokens=False))
        env.step(actions)
    longest = max(action_tokens, key=action_tokens.get)
    assert params.max_new_tokens >= action_tokens[longest], longest
    assert sum(n > 48 for n in action_tokens.values()) > 100  # the old default's budget was too short
    assert not conflicts_with_state, conflicts_with_state[:3]
    assert conflicts_page_only > 1000 if mode == "text" else conflicts_page_only == 0  # compact marks selections
    assert sum(e.state.reward == 1.0 for e in env.episodes) > 0.9 * len(goals)
