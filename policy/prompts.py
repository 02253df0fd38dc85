"""The agent's prompt and the parsing of its replies.

A prompt is the model's own chat template over: a system message (the action syntax), one worked example as
an earlier exchange (the 135M default emits no valid action without it), the last `history_turns` turns (page,
then the reply the model gave), and the current turn:

    Instruction: i need a red cotton t-shirt ...
    Previous actions: search[red cotton t-shirt]; click[b0123]; click[red]     ("none" on the first turn)
    Last action click[xl] did nothing: 'xl' is not clickable on this page    (only after an invalid action)
    Page: <the observation>
    Actions: click[back to search], click[< prev], ..., click[red] (selected), ..., click[buy now]

In `compact` observation mode the page itself writes every clickable as its click takes it and marks the
selected options (webshop/pages.py), so the Actions line only says how to act on it, and the example is
rendered in that mode too: a third fewer tokens than `text`, but the 135M model learned less from it (README,
"The compact prompt": it re-clicks the option it has just selected).

The turn carries what the agent needs to act and the page does not show: its previous actions, the options it has
selected (in `text` mode an item page reads the same before and after an option is clicked) and why the last
action did nothing (an invalid action leaves the page as it was; without that line the next prompt would repeat
the last one and a greedy policy would repeat its action to the step cap). The order puts what repeats first, so
vLLM's prefix cache reuses it: system text and example (every prompt), instruction (every turn and sample of a
goal), previous actions (they only grow within an episode), then the page.

When the prompt is longer than `max_prompt_tokens`, history turns are dropped from the oldest; if the current
turn alone does not fit, the prompt is `None` and the rollout ends that episode with end_reason "context".

The action is the first `search[...]` or `click[...]` in a reply; text before it (reasoning) is allowed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from webshop.pages import PageState, page_nodes, render

SYSTEM_PROMPT = """You are a shopping agent on the WebShop website. Each turn you see your instruction, the \
current page and the actions you can take. Reply with exactly one action: search[keywords] when the page has \
a search box, or click[button] where button is one of the clickable texts listed. Open a product that matches \
the instruction, click its matching options, then click[buy now]."""

# The worked example, given as one earlier exchange: the 135M default follows a shown reply, not a description.
# Its turn is the search page of this instruction in the prompt's observation mode (`example_turn`).
EXAMPLE_INSTRUCTION = "i need a red cotton t-shirt in size small, and price lower than 30.00 dollars"
EXAMPLE_REPLY = "search[red cotton t-shirt small]"
CLICK_ON_PAGE = "click[...] with a [bracketed] text of the page"

# A reply's action: the first search[...] or click[...]; the argument may not contain brackets or a newline.
# Lenient about case and a space before the bracket ("Click [x]"), which small models often write.
_ACTION = re.compile(r"\b(search|click) ?\[([^\[\]\n]*)\]", re.IGNORECASE)


@dataclass(frozen=True)
class PromptConfig:
    history_turns: int = 0
    """Previous turns (observation and reply) kept in the prompt before the current one."""
    max_prompt_tokens: int = 1536
    """Prompt budget in tokens; history is dropped from the oldest turn to fit, then the episode ends."""


@dataclass(frozen=True)
class Turn:
    """What the agent is shown on one turn of an episode."""
    instruction: str
    observation: str
    available: dict
    """The page's actions: {'has_search_bar': bool, 'clickables': [...]} (webshop.env.Episode.available_actions)."""
    selected: tuple[str, ...] = ()
    """Option values selected on the current item page."""
    previous_actions: tuple[str, ...] = ()
    """The episode's actions so far, in order ("" where a reply held no action)."""
    invalid_reason: str | None = None
    """Why the previous action changed nothing; None when it was valid (or on the first turn)."""
    mode: str = "text"
    """The observation mode of `observation` (compact pages carry the clickables, so the Actions line does not)."""

    @classmethod
    def of(cls, episode) -> Turn:
        """The current turn of a `webshop.env.Episode`."""
        state = episode.state
        return cls(episode.goal.instruction_text, episode.observation(), episode.available_actions(),
                   tuple(state.options.values()) if state.kind == "item" else (), tuple(episode.actions),
                   episode.invalid_reason, episode.mode)


def parse_action(reply: str) -> str | None:
    """The first `search[...]` or `click[...]` in the reply, as the environment receives it; None if none."""
    m = _ACTION.search(reply)
    return None if m is None else f"{m.group(1).lower()}[{m.group(2)}]"


def format_actions(available: dict, selected: tuple[str, ...] = (), mode: str = "text") -> str:
    actions = ["search[...]"] if available["has_search_bar"] else []
    clicks = [c for c in available["clickables"] if c != "search"]
    if mode == "compact":  # the page lists the clicks and marks the selected options
        return ", ".join(actions + ([CLICK_ON_PAGE] if clicks else []))
    return ", ".join(actions + [f"click[{c}]" + (" (selected)" if c in selected else "") for c in clicks])


def turn_message(turn: Turn) -> str:
    previous = "; ".join(a or "(no action)" for a in turn.previous_actions) or "none"
    lines = [f"Instruction: {turn.instruction}", f"Previous actions: {previous}"]
    if turn.invalid_reason:
        last = turn.previous_actions[-1] if turn.previous_actions else ""
        lines.append(f"Last action {last or '(no action)'} did nothing: {turn.invalid_reason}")
    lines += [f"Page: {turn.observation}", f"Actions: {format_actions(turn.available, turn.selected, turn.mode)}"]
    return "\n".join(lines)


@lru_cache(maxsize=None)  # the same for every prompt of a mode; build_messages asks for it on every turn
def example_turn(mode: str) -> str:
    """The worked example's turn: the search page of EXAMPLE_INSTRUCTION, in the given observation mode."""
    page = render(page_nodes(PageState(), EXAMPLE_INSTRUCTION, None), mode)
    return turn_message(Turn(EXAMPLE_INSTRUCTION, page, {"has_search_bar": True, "clickables": ["search"]},
                             mode=mode))


def build_messages(turn: Turn, history: list[tuple[str, str]]) -> list[dict]:
    """Chat messages: system, the example, (page, reply) pairs of `history`, then the current turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": example_turn(turn.mode)},
                {"role": "assistant", "content": EXAMPLE_REPLY}]
    for past_observation, reply in history:
        messages += [{"role": "user", "content": f"Page: {past_observation}"},
                     {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": turn_message(turn)})
    return messages


def encode_prompt(tokenizer, turn: Turn, history: list[tuple[str, str]], config: PromptConfig) -> list[int] | None:
    """Token ids of the prompt (chat template, generation prompt appended), fitted to the token budget."""
    history = history[-config.history_turns:] if config.history_turns else []
    for start in range(len(history) + 1):  # drop the oldest turn until it fits
        messages = build_messages(turn, history[start:])
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        if len(ids) <= config.max_prompt_tokens:
            return list(ids)
    return None
