"""The agent's prompt and the parsing of its replies.

A prompt is the model's own chat template over: a system message (the action syntax), one worked example as
an earlier exchange (the 135M default emits no valid action without it), the last `history_turns` turns (observation,
then the reply the model gave), and the current turn (instruction, observation, available actions). When the
prompt is longer than `max_prompt_tokens`, history turns are dropped from the oldest; if the current turn alone
does not fit, the prompt is `None` and the rollout ends that episode with end_reason "context".

The action is the first `search[...]` or `click[...]` in a reply; text before it (reasoning) is allowed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM_PROMPT = """You are a shopping agent on the WebShop website. Each turn you see your instruction, the \
current page and the actions you can take. Reply with exactly one action: search[keywords] when the page has \
a search box, or click[button] where button is one of the clickable texts listed. Open a product that matches \
the instruction, click its matching options, then click[buy now]."""

# The worked example, given as one earlier exchange: the 135M default follows a shown reply, not a description.
EXAMPLE_TURN = ("Instruction: i need a red cotton t-shirt in size small, and price lower than 30.00 dollars\n"
                "Page: WebShop [SEP] Instruction: [SEP] i need a red cotton t-shirt in size small, and price "
                "lower than 30.00 dollars [SEP] Search\nActions: search[...]")
EXAMPLE_REPLY = "search[red cotton t-shirt small]"

# A reply's action: the first search[...] or click[...]; the argument may not contain brackets or a newline.
# Lenient about case and a space before the bracket ("Click [x]"), which small models often write.
_ACTION = re.compile(r"\b(search|click) ?\[([^\[\]\n]*)\]", re.IGNORECASE)


@dataclass(frozen=True)
class PromptConfig:
    history_turns: int = 2
    """Previous turns (observation and reply) kept in the prompt before the current one."""
    max_prompt_tokens: int = 1536
    """Prompt budget in tokens; history is dropped from the oldest turn to fit, then the episode ends."""


def parse_action(reply: str) -> str | None:
    """The first `search[...]` or `click[...]` in the reply, as the environment receives it; None if none."""
    m = _ACTION.search(reply)
    return None if m is None else f"{m.group(1).lower()}[{m.group(2)}]"


def format_actions(available: dict) -> str:
    actions = ["search[...]"] if available["has_search_bar"] else []
    actions += [f"click[{c}]" for c in available["clickables"] if c != "search"]
    return ", ".join(actions)


def turn_message(instruction: str, observation: str, available: dict) -> str:
    return f"Instruction: {instruction}\nPage: {observation}\nActions: {format_actions(available)}"


def build_messages(instruction: str, observation: str, available: dict,
                   history: list[tuple[str, str]]) -> list[dict]:
    """Chat messages: system, the example, (page, reply) pairs of `history`, then the current turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": EXAMPLE_TURN},
                {"role": "assistant", "content": EXAMPLE_REPLY}]
    for past_observation, reply in history:
        messages += [{"role": "user", "content": f"Page: {past_observation}"},
                     {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": turn_message(instruction, observation, available)})
    return messages


def encode_prompt(tokenizer, instruction: str, observation: str, available: dict,
                  history: list[tuple[str, str]], config: PromptConfig) -> list[int] | None:
    """Token ids of the prompt (chat template, generation prompt appended), fitted to the token budget."""
    history = history[-config.history_turns:] if config.history_turns else []
    for start in range(len(history) + 1):  # drop the oldest turn until it fits
        messages = build_messages(instruction, observation, available, history[start:])
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        if len(ids) <= config.max_prompt_tokens:
            return list(ids)
    return None
