"""The generation engines on the embedded SmolLM2-135M: completions as the trainer needs them.

Every completion's ids decode to its text, it ends right after the first token holding "]" (or at the
end-of-turn token, or at `max_new_tokens`), and its log-probabilities are the raw model's: they are checked
against an independent teacher-forced pass of transformers' model over prompt + completion.

Tolerances: the engines and the teacher-forced pass run in the dtype `--dtype auto` picks here (float32 on a CPU
without native bf16, else bf16); the tolerances are bf16's. Its 8-bit mantissa rounds a logit of magnitude 16-32
to a multiple of 0.125, so two evaluation orders of the same network (incremental decoding with a KV cache over a left-padded batch,
or vLLM's CPU kernels, against one full forward pass) therefore disagree on a log-probability by a few hundredths
on average and by up to ~0.2 on single tokens (measured here: mean 0.02-0.07, max 0.19). We allow a pooled mean
of 0.1 and a single-token maximum of 0.5 nats. What this catches (measured on the same prompts): logprobs one
position off miss by ~10 nats on average; tempered ones (sampling at temperature 0.6) instead of raw ones miss
by 0.25 on average and by over 1 nat on single tokens. The same rounding makes near-ties between the two best
next tokens flip with padding or kernels, so greedy runs are compared exactly where a tie is not in play.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from policy.engines import STOP, Completion, Sampling, make_engine
from policy.hardware import engine_dtype, torch_dtype
from policy.prompts import PromptConfig, Turn, encode_prompt, parse_action
from webshop.env import Episode

MEAN_TOL, MAX_TOL = 0.1, 0.5  # nats, see the module docstring
TIE_TOL = 0.25  # two bf16 logit roundings apart: a near-tie that padding or kernels may flip
N_GOALS = 16


# ---------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    return AutoTokenizer.from_pretrained(embedded_model)


@pytest.fixture(scope="module")
def first_turns(generated_shop, tokenizer) -> list[list[int]]:
    """The first-turn prompts (a search page) of N_GOALS goals spread over the generated shop."""
    n = len(generated_shop.goals)
    prompts = []
    for i in range(N_GOALS):
        ep = Episode(generated_shop, i * n // N_GOALS)
        prompts.append(encode_prompt(tokenizer, Turn.of(ep), [], PromptConfig()))
    return prompts


@pytest.fixture(scope="module")
def later_turn(generated_shop, tokenizer) -> list[int]:
    """A third-turn prompt (an item page, with two history turns): much longer than a first turn."""
    ep = Episode(generated_shop, 3)
    history = []
    for _ in range(2):
        obs, available = ep.observation(), ep.available_actions()
        if available["has_search_bar"]:
            reply = f"search[{' '.join(ep.goal.instruction_text.split()[:5])}]"
        else:
            reply = f"click[{next(c for c in available['clickables'] if c.startswith('b0'))}]"
        assert ep.step(reply).info["valid"]
        history.append((obs, reply))
    assert ep.state.kind == "item"
    return encode_prompt(tokenizer, Turn.of(ep), history,
                         PromptConfig(history_turns=2))


@pytest.fixture(scope="module")
def prompts(first_turns) -> list[list[int]]:
    """What the hf tests generate on: three first turns of different lengths (a batch is left-padded)."""
    out = first_turns[:3]
    assert len({len(p) for p in out}) == len(out) and max(map(len, out)) - min(map(len, out)) >= 10
    return out


@pytest.fixture(scope="module")
def teacher_forced(embedded_model):
    """(prompt, completion) -> the log-softmax of transformers' own model in the engines' dtype (loaded here)
    at each completion position, from one unpadded forward pass: [len(completion), vocab]. Memoised: CPU time
    is the budget of these tests."""
    dtype = torch_dtype(engine_dtype("auto", embedded_model))
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=dtype).eval()
    cache = {}

    def forward(prompt: list[int], completion: list[int]) -> torch.Tensor:
        key = (tuple(prompt), tuple(completion))
        if key not in cache:
            with torch.inference_mode():
                logits = model(torch.tensor([prompt + completion]), logits_to_keep=len(completion) + 1).logits
            cache[key] = logits[0, :-1].float().log_softmax(-1)
        return cache[key]

    return forward


def stop_tokens(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id}


def holds_stop(tokenizer, token: int) -> bool:
    return STOP in tokenizer.decode([token])


def check_well_formed(tokenizer, completions: list[Completion], max_new_tokens: int) -> None:
    """Ids decode to the text; one log-probability per id; a completion ends at its first stop or at the cap."""
    eos = stop_tokens(tokenizer)
    for c in completions:
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert len(c.logprobs) == len(c.token_ids) and 1 <= len(c.token_ids) <= max_new_tokens
        assert all(lp <= 0 and lp > -float("inf") for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        *body, last = c.token_ids
        assert not any(t in eos or holds_stop(tokenizer, t) for t in body), c.text  # nothing after a stop
        ends_at_stop = last in eos or holds_stop(tokenizer, last)
        if c.finish_reason == "stop":
            assert ends_at_stop, c.text
        else:
            assert not ends_at_stop and len(c.token_ids) == max_new_tokens, c.text


def logprob_errors(teacher_forced, prompts, completions) -> torch.Tensor:
    """|engine log-probability - teacher-forced log-probability| over every completion token."""
    errors = []
    for prompt, c in zip(prompts, completions):
        expected = teacher_forced(prompt, c.token_ids)[torch.arange(len(c.token_ids)),
                                                                    torch.tensor(c.token_ids)]
        errors.append((torch.tensor(c.logprobs) - expected).abs())
    return torch.cat(errors)


# ---------------------------------------------------------------------------------------------------------
# hf
# ---------------------------------------------------------------------------------------------------------
HF_TOKENS = 12


@pytest.fixture(scope="module")
def hf_runs(hf_engine, prompts):
    """Each hf call the tests need, made once: two seeds at temperature 1, one tempered seed twice, greedy twice
    (with different seeds, which greedy ignores)."""
    run = lambda sampling: hf_engine.generate(prompts, sampling)  # noqa: E731
    return {
        "seed1": run(Sampling(1.0, 1.0, HF_TOKENS, seed=1)),
        "seed2": run(Sampling(1.0, 1.0, HF_TOKENS, seed=2)),
        "tempered": run(Sampling(0.6, 0.9, HF_TOKENS, seed=3)),
        "tempered_again": run(Sampling(0.6, 0.9, HF_TOKENS, seed=3)),
        "greedy": run(Sampling(0.0, 1.0, HF_TOKENS, seed=0)),
        "greedy_again": run(Sampling(0.0, 1.0, HF_TOKENS, seed=4)),
    }


def test_hf_completions_are_well_formed(hf_runs, tokenizer, prompts):
    for name, completions in hf_runs.items():
        assert len(completions) == len(prompts), name
        check_well_formed(tokenizer, completions, HF_TOKENS)
    every = [c for cs in hf_runs.values() for c in cs]
    # the checks above are not vacuous: replies do end at "]" (a first-turn search) ...
    assert any(c.finish_reason == "stop" and holds_stop(tokenizer, c.token_ids[-1]) for c in every)


def test_hf_stops_at_the_token_cap(hf_engine, tokenizer, prompts):
    completions = hf_engine.generate(prompts[:1], Sampling(1.0, 1.0, 2, seed=0))
    check_well_formed(tokenizer, completions, 2)
    assert completions[0].finish_reason == "length"  # "search" "[": no "]" within two tokens


def test_hf_same_seed_same_completions(hf_runs):
    assert [c.token_ids for c in hf_runs["tempered"]] == [c.token_ids for c in hf_runs["tempered_again"]]
    assert [c.logprobs for c in hf_runs["tempered"]] == [c.logprobs for c in hf_runs["tempered_again"]]


def test_hf_other_seed_other_completions(hf_runs):
    """At temperature 1 the 135M model's keywords are diverse: three prompts all repeating is all but impossible."""
    assert [c.token_ids for c in hf_runs["seed1"]] != [c.token_ids for c in hf_runs["seed2"]]


def test_hf_greedy_is_reproducible(hf_runs):
    assert [c.token_ids for c in hf_runs["greedy"]] == [c.token_ids for c in hf_runs["greedy_again"]]


@pytest.mark.parametrize("run", ["seed1", "tempered", "greedy"])
def test_hf_logprobs_are_the_raw_model_logprobs(hf_runs, teacher_forced, prompts, run):
    """Raw (temperature 1, before top-p) log-probabilities, also when sampling at temperature 0.6."""
    errors = logprob_errors(teacher_forced, prompts, hf_runs[run])
    assert errors.mean() < MEAN_TOL and errors.max() < MAX_TOL, errors


def test_hf_greedy_picks_the_argmax(hf_runs, teacher_forced, prompts):
    for prompt, c in zip(prompts, hf_runs["greedy"]):
        lp = teacher_forced(prompt, c.token_ids)
        chosen = lp[torch.arange(len(c.token_ids)), torch.tensor(c.token_ids)]
        assert (lp.max(-1).values - chosen).max() < TIE_TOL, c.text


def test_hf_batch_equals_each_prompt_alone(hf_engine, hf_runs, teacher_forced, prompts):
    """Left padding changes nothing: a batched greedy completion is the prompt's own one, up to bf16 near-ties."""
    alone = [hf_engine.generate([p], Sampling(0.0, 1.0, HF_TOKENS, seed=0))[0] for p in prompts]
    same = 0
    for prompt, batched, single in zip(prompts, hf_runs["greedy"], alone):
        a, b = batched.token_ids, single.token_ids
        if a == b:
            same += 1
            continue
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)  # neither is cut short before the other
        lp = teacher_forced(prompt, b[:i + 1])[i]
        assert abs(lp[a[i]] - lp[b[i]]) < TIE_TOL, (batched.text, single.text)
    assert same >= len(prompts) - 1


# ---------------------------------------------------------------------------------------------------------
# vllm
# ---------------------------------------------------------------------------------------------------------
VLLM_TOKENS = 32


@pytest.fixture(scope="module")
def vllm_runs(vllm_engine, first_turns, later_turn):
    """First turns of N_GOALS goals plus the later turn: greedy and tempered (vllm is seeded once at start)."""
    batch = first_turns + [later_turn]
    return batch, {"greedy": vllm_engine.generate(batch, Sampling(0.0, 1.0, VLLM_TOKENS)),
                   "tempered": vllm_engine.generate(batch, Sampling(0.6, 0.9, VLLM_TOKENS))}


@pytest.mark.vllm
def test_vllm_completions_are_well_formed(vllm_runs, tokenizer):
    batch, runs = vllm_runs
    for name, completions in runs.items():
        assert len(completions) == len(batch), name
        check_well_formed(tokenizer, completions, VLLM_TOKENS)


@pytest.mark.vllm
@pytest.mark.parametrize("run", ["greedy", "tempered"])
def test_vllm_first_turn_is_a_search(vllm_runs, run):
    """The one-shot prompt works: most first turns (a search page) get a parseable search[...] reply."""
    batch, runs = vllm_runs
    actions = [parse_action(c.text) for c in runs[run][:N_GOALS]]
    searches = [a for a in actions if a is not None and a.startswith("search[") and a != "search[]"]
    assert len(searches) >= N_GOALS // 2, [c.text for c in runs[run][:N_GOALS]]


@pytest.mark.vllm
@pytest.mark.parametrize("run", ["greedy", "tempered"])
def test_vllm_logprobs_match_hf_teacher_forcing(vllm_runs, teacher_forced, run):
    batch, runs = vllm_runs
    picks = [0, 1, 2, len(batch) - 1]  # the hf prompts (passes shared with the hf tests) and the long one
    errors = logprob_errors(teacher_forced, [batch[i] for i in picks], [runs[run][i] for i in picks])
    assert errors.mean() < MEAN_TOL and errors.max() < MAX_TOL, errors


@pytest.mark.vllm
def test_vllm_greedy_agrees_with_hf_greedy(vllm_runs, hf_runs, prompts):
    """Different kernels (and in bf16 different roundings): the first few greedy tokens agree on most prompts,
    not necessarily all."""
    batch, runs = vllm_runs
    assert batch[:len(prompts)] == prompts
    vllm_greedy = runs["greedy"][:len(prompts)]
    k = 4
    agree = sum(v.token_ids[:k] == h.token_ids[:k] for v, h in zip(vllm_greedy, hf_runs["greedy"]))
    assert agree >= len(prompts) - 1, ([v.text for v in vllm_greedy], [h.text for h in hf_runs["greedy"]])


@pytest.mark.vllm
def test_vllm_counts_prompt_tokens_and_prefix_cache_hits(vllm_engine, later_turn):
    """stats() is what the rollout manifests and bench/iteration report: a prompt sent twice is served from the
    prefix cache the second time, in whole 32-token blocks."""
    before = vllm_engine.stats()
    for _ in range(2):
        vllm_engine.generate([later_turn], Sampling(0.0, 1.0, 4))
    work = {k: v - before[k] for k, v in vllm_engine.stats().items()}
    assert work["prompt_tokens"] == 2 * len(later_turn)
    assert work["prefix_cache_hit_tokens"] >= (len(later_turn) - 1) // 32 * 32
    assert work["generated_tokens"] >= 2 and work["prefill_seconds"] > 0


# ---------------------------------------------------------------------------------------------------------
# make_engine
# ---------------------------------------------------------------------------------------------------------
def test_make_engine_rejects_an_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="'nope'"):
        make_engine("nope", tmp_path)


def test_vllm_temporary_files_stay_out_of_stage_folders_and_socket_paths_fit(tmp_path):
    """vLLM's processes talk over unix sockets in TMPDIR (at most 107 bytes with a 36-byte uuid): found when the
    warm-started checkpoint, deep in its stage folder, was the first model a process served."""
    from policy.engines import vllm_cache_dir

    short = vllm_cache_dir("/srv/apo")  # only computes the path
    assert short == Path("/srv/apo/cache/vllm")
    deep = vllm_cache_dir(tmp_path / ("x" * 80))
    assert not str(deep).startswith(str(tmp_path)) and vllm_cache_dir() == deep
    for cache in (short, deep):
        assert len(str(cache / "tmpdir")) + 1 + 36 <= 107


@pytest.mark.vllm
@pytest.mark.slow  # 85 s; the default suite's SIGKILL test (hf engine) covers the watchdog in 15 s
def test_sigterm_leaves_no_process_behind(tiny_model, tmp_path):
    """`kill PID`, `timeout` and schedulers send SIGTERM to `apo train`: its children (vLLM's EngineCore and
    worker, 2 GiB of KV cache and the model; the temporary Prefect server) must end with it, not be orphaned.
    Without apo.cli's handler the Prefect server outlived the process (found by this test)."""
    import signal

    from conftest import signal_apo

    args = ["train", "--model", str(tiny_model), "--engine", "vllm", "--dtype", "float32", "--run", "sigterm",
            "--num-steps", "1", "--eval-goals", "4", "--output-dir", str(tmp_path)]
    status, alive = signal_apo(args, lambda lines: any("VLLM" in line for line in lines), signal.SIGTERM)
    assert status != 0
    assert not alive, f"still running after SIGTERM: {alive}"
