"""The train stage on the real SmolLM2-135M: per-token log-probabilities against a plain full-logits forward,
KL = 0 at initialisation, the weighted-SFT and apo objectives (values and gradients) against hand
computations, and checkpoint / resume / refusal of the stage. Sequences are tiny synthetic turns.

Torch runs on one thread here: on a shared 2-core machine two OpenMP threads that are preempted spin-wait and
make every forward ~8x slower (measured), which would not fit the time budget of this file.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from policy.hardware import resolve_dtype, torch_dtype
from stages.train import (METRICS_SCHEMA, TRAINING_ATTENTION, TRAINING_STATE, TrainParams, action_logprobs,
                          episode_batches, imitated_only, load_policy, load_train_data, train_stage, train_step)
from stages.weights import WeightsParams, weights_stage
from storage.parquet import read_table, write_table
from storage.stages import read_manifest
from storage.tables import EPISODES_SCHEMA, TURNS_SCHEMA, to_table

RUN = "test-train"
PROMPTS = ["Instruction: find a red cotton shirt under 30 dollars. Page: search",
           "Instruction: i need blue running shoes in size 9. Page: results, three items",
           "Instruction: a small wooden desk lamp. Page: item page with two options"]
COMPLETIONS = ["search[red shirt]", "click[b0012]", "click[buy now]"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


@pytest.fixture(scope="module")
def loaded(embedded_model):
    """(policy, reference, optimizer, step) as the stage loads them; tests that train use a deep copy."""
    return load_policy(embedded_model, embedded_model, TrainParams())


def ids_of(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


# ---------------------------------------------------------------------------------------------------------
# hand computations: one unpadded sequence at a time, full logits over the whole sequence
# ---------------------------------------------------------------------------------------------------------
# The dtype the stage trains in on this machine (TrainParams' default `auto`): float32 where the CPU has no native
# bf16, else bf16 autocast. `autocast=True` below computes as the stage does.
STAGE_DTYPE = resolve_dtype("auto", "cpu")


def stage_autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch_dtype(STAGE_DTYPE), enabled=enabled and STAGE_DTYPE != "float32")


def full_logprobs(model, prompt_ids, completion_ids, autocast=False):
    """(log pi of each completion token [c], full log-softmax at those positions [c, V]) from model(ids).logits."""
    ids = torch.tensor([prompt_ids + completion_ids])
    p, c = len(prompt_ids), len(completion_ids)
    with stage_autocast(autocast):
        logits = model(input_ids=ids).logits
    logps = F.log_softmax(logits.float()[0, p - 1:p + c - 1], dim=-1)
    return logps.gather(1, ids[0, p:p + c, None])[:, 0], logps


def hand_episode_terms(policy, ref, rows, autocast=False):
    """Per episode: summed CE, summed full-vocabulary KL(pi || ref) and summed log-ratio over its action
    tokens, and its action-token count (tensors carry the policy's graph)."""
    out = {}
    for r in rows:
        logp, full = full_logprobs(policy, r["prompt_ids"], r["completion_ids"], autocast)
        with torch.no_grad():
            ref_logp, ref_full = full_logprobs(ref, r["prompt_ids"], r["completion_ids"], autocast)
        kl = (full.exp() * (full - ref_full)).sum(-1)
        e = out.setdefault(r["episode_id"], {"ce": 0.0, "kl": 0.0, "delta": 0.0, "tokens": 0})
        e["ce"] = e["ce"] - logp.sum()
        e["kl"] = e["kl"] + kl.sum()
        e["delta"] = e["delta"] + (logp - ref_logp).sum()
        e["tokens"] += len(r["completion_ids"])
    return out


def sft_objective(policy, ref, rows, weights: dict, kl_coef: float, autocast=False):
    """(1/E) sum_e w_e * mean_t CE_t + kl_coef * (1/E) sum_e mean_t KL_t  (the stages/train.py docstring)."""
    terms = hand_episode_terms(policy, ref, rows, autocast)
    ce = sum(weights[e] * t["ce"] / t["tokens"] for e, t in terms.items()) / len(terms)
    kl = sum(t["kl"] / t["tokens"] for t in terms.values()) / len(terms)
    return ce + kl_coef * kl, ce, kl


def apo_objective(policy, ref, rows, targets: dict, beta2: float, autocast=False):
    """(1/E) sum_e (beta2 * sum_t (log pi - log pi_ref) - A_e)^2, and the mean residual."""
    terms = hand_episode_terms(policy, ref, rows, autocast)
    residuals = [beta2 * t["delta"] - targets[e] for e, t in terms.items()]
    return sum(x * x for x in residuals) / len(residuals), sum(residuals) / len(residuals)


def seq_logp(model, row) -> float:
    with torch.no_grad():
        return full_logprobs(model, row["prompt_ids"], row["completion_ids"])[0].sum().item()


# ---------------------------------------------------------------------------------------------------------
# data: real turns / weights Parquet files read back by load_train_data
# ---------------------------------------------------------------------------------------------------------
def turn_row(tok, episode_id: str, turn: int, prompt: str, completion: str, page: str = "search",
             valid: bool = True) -> dict:
    completion_ids = ids_of(tok, completion) if completion else []
    return {"episode_id": episode_id, "turn": turn, "page": page, "observation": prompt,
            "prompt_ids": ids_of(tok, prompt), "completion_ids": completion_ids,
            "completion_logprobs": [-1.0] * len(completion_ids), "completion_text": completion,
            "action": completion, "valid": valid}


def write_weights(path: Path, rows: dict[str, tuple[float, float]]) -> Path:
    """A weights.parquet with the weights stage's columns: episode_id -> (weight, advantage)."""
    ids = sorted(rows)
    table = pa.table({"episode_id": ids, "goal_idx": pa.array(range(len(ids)), pa.int32()),
                      "sample_idx": pa.array([0] * len(ids), pa.int32()), "reward": [0.5] * len(ids),
                      "r": [0.5] * len(ids), "v_star": [0.5 - rows[e][1] for e in ids],
                      "advantage": [rows[e][1] for e in ids], "adv_norm": [rows[e][0] - 1.0 for e in ids],
                      "weight": [rows[e][0] for e in ids]})
    return write_table(table, path)


def make_data(tmp_path, tok, turns: list[tuple[str, int, str, str]], weights: dict[str, tuple[float, float]]):
    rows = [turn_row(tok, *t) for t in turns]
    write_table(to_table(rows, TURNS_SCHEMA), tmp_path / "turns.parquet")
    write_weights(tmp_path / "weights.parquet", weights)
    return load_train_data(tmp_path / "turns.parquet", tmp_path / "weights.parquet")


THREE_EPISODES = [("ep-a", 0, PROMPTS[0], COMPLETIONS[0]), ("ep-a", 1, PROMPTS[1], COMPLETIONS[1]),
                  ("ep-b", 0, PROMPTS[2], COMPLETIONS[2]), ("ep-c", 0, PROMPTS[1], COMPLETIONS[0])]


def test_load_train_data(tmp_path, tok):
    turns = [("ep-b", 1, PROMPTS[1], COMPLETIONS[1]), ("ep-a", 1, PROMPTS[0], ""),  # a reply with no tokens
             ("ep-b", 0, PROMPTS[0], COMPLETIONS[0]), ("ep-a", 0, PROMPTS[2], COMPLETIONS[2]),
             ("ep-z", 0, PROMPTS[2], COMPLETIONS[2])]  # an episode without a weight
    data = make_data(tmp_path, tok, turns, {"ep-a": (2.5, 0.7), "ep-b": (0.1, -0.4), "ep-q": (1.0, 0.0)})
    assert set(data.column_names) >= {"episode_id", "turn", "prompt_ids", "completion_ids", "weight", "apo_target",
                                      "episode_tokens"}
    rows = data.to_list()
    assert [(r["episode_id"], r["turn"]) for r in rows] == [("ep-a", 0), ("ep-b", 0), ("ep-b", 1)]
    assert rows[0]["prompt_ids"] == ids_of(tok, PROMPTS[2])
    assert rows[0]["completion_ids"] == ids_of(tok, COMPLETIONS[2])
    assert (rows[0]["weight"], rows[0]["apo_target"]) == (2.5, 0.7)
    assert [(r["weight"], r["apo_target"]) for r in rows[1:]] == [(0.1, -0.4)] * 2
    assert rows[0]["episode_tokens"] == len(ids_of(tok, COMPLETIONS[2]))
    b_tokens = len(ids_of(tok, COMPLETIONS[0])) + len(ids_of(tok, COMPLETIONS[1]))
    assert rows[1]["episode_tokens"] == rows[2]["episode_tokens"] == b_tokens

    write_weights(tmp_path / "none.parquet", {"ep-q": (1.0, 0.0)})
    with pytest.raises(ValueError, match="no weighted turns"):
        load_train_data(tmp_path / "turns.parquet", tmp_path / "none.parquet")


# One episode's turns as the rollout records them (page before the action, validity after it) and which of them
# changed nothing: an invalid click, and an option re-clicked on the same visit to an item page. The same click
# after going back to the results (a new visit: the options were reset) and repeated valid clicks on other pages
# are not no-ops.
NOOP_EPISODE = [("search", "search[red shirt]", True, False), ("results", "click[b0099]", False, True),
                ("results", "click[next >]", True, False), ("results", "click[next >]", True, False),
                ("results", "click[b0012]", True, False), ("item", "click[red]", True, False),
                ("item", "click[large]", True, False), ("item", "click[red]", True, True),
                ("item", "click[< prev]", True, False), ("results", "click[b0012]", True, False),
                ("item", "click[red]", True, False), ("item", "click[red]", True, True),
                ("item", "click[buy now]", True, False)]


def noop_data(tmp_path, tok, weight: float = 2.0):
    turns = [("ep-n", i, f"{PROMPTS[i % 3]} (turn {i})", action, page, valid)
             for i, (page, action, valid, _) in enumerate(NOOP_EPISODE)]
    turns.append(("ep-o", 0, PROMPTS[2], COMPLETIONS[2], "item", True))
    return make_data(tmp_path, tok, turns, {"ep-n": (weight, 0.5), "ep-o": (1.0, 0.1)})


def test_load_train_data_marks_replies_that_changed_nothing(tmp_path, tok):
    rows = noop_data(tmp_path, tok).to_list()
    assert [r["noop"] for r in rows if r["episode_id"] == "ep-n"] == [n for *_, n in NOOP_EPISODE]
    assert [r["noop"] for r in rows if r["episode_id"] == "ep-o"] == [False]


# ---------------------------------------------------------------------------------------------------------
# 5, 6. action_logprobs
# ---------------------------------------------------------------------------------------------------------
def padded(rows, pad_id):
    seqs = [r["prompt_ids"] + r["completion_ids"] for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask, [len(r["prompt_ids"]) for r in rows], [len(r["completion_ids"]) for r in rows]


def varied_rows(tok):
    """Rows of different prompt and completion lengths (one completion of a single token)."""
    return [{"prompt_ids": ids_of(tok, PROMPTS[0]), "completion_ids": ids_of(tok, COMPLETIONS[0])},
            {"prompt_ids": ids_of(tok, PROMPTS[1] + " and more words to make it longer"),
             "completion_ids": ids_of(tok, COMPLETIONS[1])},
            {"prompt_ids": ids_of(tok, "Page: search"), "completion_ids": ids_of(tok, "search")[:1]}]


def test_kl_is_zero_at_initialisation(loaded, tok):
    policy, ref, optimizer, step = loaded
    assert step == 0 and policy is not ref
    assert policy.training and not ref.training
    assert all(p.requires_grad and p.dtype == torch.float32 for p in policy.parameters())
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == TrainParams().learning_rate

    rows = varied_rows(tok)
    ids, mask, p_lens, c_lens = padded(rows, policy.config.pad_token_id)
    for autocast in (False, True):  # fp32, and the autocast train_step runs
        with torch.no_grad(), stage_autocast(autocast):
            logp, ref_logp, kl, row = action_logprobs(policy, ids, mask, p_lens, c_lens, 4, ref)
        assert logp.shape == ref_logp.shape == kl.shape == (sum(c_lens),)
        assert torch.equal(logp, ref_logp)
        assert kl.abs().max().item() < 1e-6
        assert torch.isfinite(logp).all() and (logp < 0).all()


def test_action_logprobs_matches_full_logits(loaded, tok):
    policy, ref = loaded[0], loaded[1]
    rows = varied_rows(tok)
    pad_id = policy.config.pad_token_id
    ids, mask, p_lens, c_lens = padded(rows, pad_id)
    assert len(set(mask.sum(1).tolist())) == 3  # three lengths, right-padded
    with torch.no_grad():
        logp, ref_logp, kl, row = action_logprobs(policy, ids, mask, p_lens, c_lens, 1024)
        assert ref_logp is None and kl is None
        want = torch.cat([full_logprobs(policy, r["prompt_ids"], r["completion_ids"])[0] for r in rows])
        # the same padded batch through model(...).logits, gathered at positions p-1 .. p+c-2
        batch = F.log_softmax(policy(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        gathered = torch.cat([batch[i, p - 1:p + c - 1].gather(1, ids[i, p:p + c, None])[:, 0]
                              for i, (p, c) in enumerate(zip(p_lens, c_lens))])
    assert row.tolist() == [i for i, c in enumerate(c_lens) for _ in range(c)]
    torch.testing.assert_close(logp, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logp, gathered, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        # the chunk size only changes how many positions' logits exist at once
        for chunk in (1, 2, 5, sum(c_lens)):
            got, got_ref, got_kl, got_row = action_logprobs(policy, ids, mask, p_lens, c_lens, chunk, ref)
            torch.testing.assert_close(got, logp, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_ref, logp, atol=1e-5, rtol=1e-5)
            assert got_kl.abs().max().item() < 1e-6
            assert torch.equal(got_row, row)
        # what sits in the padding does not matter
        other = ids.masked_fill(mask == 0, 17)
        got = action_logprobs(policy, other, mask, p_lens, c_lens, 3)[0]
    torch.testing.assert_close(got, logp, atol=1e-5, rtol=1e-5)


def test_action_logprobs_kl_against_full_vocabulary(loaded, tok):
    """With policy != reference: ref_logp and the per-token KL(pi || ref) over the whole vocabulary."""
    policy, ref = perturbed(loaded[0]), loaded[1]
    rows = varied_rows(tok)
    ids, mask, p_lens, c_lens = padded(rows, policy.config.pad_token_id)
    with torch.no_grad():
        logp, ref_logp, kl, _ = action_logprobs(policy, ids, mask, p_lens, c_lens, 2, ref)
        full = [full_logprobs(policy, r["prompt_ids"], r["completion_ids"]) for r in rows]
        ref_full = [full_logprobs(ref, r["prompt_ids"], r["completion_ids"]) for r in rows]
    want_kl = torch.cat([(f[1].exp() * (f[1] - g[1])).sum(-1) for f, g in zip(full, ref_full)])
    torch.testing.assert_close(logp, torch.cat([f[0] for f in full]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ref_logp, torch.cat([g[0] for g in ref_full]), atol=1e-4, rtol=1e-4)
    assert want_kl.min().item() > 1e-3  # the perturbation is visible
    torch.testing.assert_close(kl, want_kl, atol=1e-4, rtol=1e-3)


def prompt_rows(tok):
    """Rows whose prompts are real WebShop prompts (policy.prompts): they share the system text and example."""
    from policy.prompts import PromptConfig, Turn, encode_prompt

    search = {"has_search_bar": True, "clickables": ["search"]}
    item = {"has_search_bar": False, "clickables": ["back to search", "< prev", "small", "large", "buy now"]}
    turns = [Turn(PROMPTS[0], "WebShop [SEP] Search", search),
             Turn(PROMPTS[2], "Back to Search [SEP] size [SEP] small [SEP] large [SEP] Buy Now", item, ("small",),
                  ("search[desk lamp]", "click[b0012]", "click[small]")),
             Turn(PROMPTS[2], "Back to Search [SEP] size [SEP] small [SEP] large [SEP] Buy Now", item, (),
                  ("search[desk lamp]", "click[b0012]"))]
    return [{"prompt_ids": encode_prompt(tok, t, [], PromptConfig()), "completion_ids": ids_of(tok, c)}
            for t, c in zip(turns, ["search[red shirt]", "click[buy now]", "click[small]"])]


def test_shared_prefix_runs_once_and_changes_nothing(loaded, tok):
    """The micro-batch's common prompt head runs once: log-probabilities, KL and gradients equal those of every row
    run whole (fp32, and the stage's autocast); a gradient-checkpointed model in training runs rows whole."""
    from stages.train import shared_prefix_len

    rows = prompt_rows(tok)
    ids, mask, p_lens, c_lens = padded(rows, loaded[0].config.pad_token_id)
    prefix = shared_prefix_len(ids, p_lens)
    head = next(i for i, (a, b) in enumerate(zip(rows[1]["prompt_ids"], rows[2]["prompt_ids"])) if a != b)
    assert 150 < prefix == next(i for i, (a, b) in enumerate(zip(rows[0]["prompt_ids"], rows[1]["prompt_ids"]))
                                if a != b) < head < min(p_lens)
    assert shared_prefix_len(ids[1:], p_lens[1:]) == head  # two turns of one goal share their instruction too
    # a prompt that is all prefix of another: the shared part stops before its last token, which predicts
    same = torch.stack([ids[0], ids[0]])
    assert shared_prefix_len(same, [p_lens[0]] * 2) == p_lens[0] - 1
    assert shared_prefix_len(ids[:1], p_lens[:1]) == 0  # one row: nothing to share

    policy, ref = perturbed(loaded[0]), loaded[1]
    policy.gradient_checkpointing_disable()
    for autocast in (False, True):
        grads = []
        for share in (False, True):
            policy.zero_grad()
            with stage_autocast(autocast):
                logp, ref_logp, kl, _ = action_logprobs(policy, ids, mask, p_lens, c_lens, 4, ref, share)
            (logp.sum() + kl.sum()).backward()
            grads.append({n: p.grad.clone() for n, p in policy.named_parameters()})
            if not share:
                want = (logp.detach(), ref_logp, kl.detach())
        bf16 = autocast and STAGE_DTYPE != "float32"
        # bf16 autocast rounds a split prefix differently from a whole forward: up to ~0.2 nats on an episode's sum
        tol = dict(atol=0.25, rtol=5e-2) if bf16 else dict(atol=1e-4, rtol=1e-4)
        for got, expected in zip((logp.detach(), ref_logp, kl.detach()), want):
            torch.testing.assert_close(got, expected, **tol)
        for name, g in grads[0].items():  # the prefix's gradient sums every row's
            if bf16:  # bf16 rounding moves single entries a lot, a whole gradient by up to ~6% (a lost prefix: 100%)
                assert (grads[1][name] - g).norm() <= 0.15 * g.norm() + 1e-6, name
            else:
                torch.testing.assert_close(grads[1][name], g, atol=1e-4 * g.abs().max().item() + 1e-6, rtol=1e-3)
    policy.gradient_checkpointing_enable()
    with torch.no_grad(), stage_autocast(True):  # want is the last loop's: autocast on
        got = action_logprobs(policy, ids, mask, p_lens, c_lens, 4, None, True)[0]
    torch.testing.assert_close(got, want[0], **tol)
    policy.zero_grad()


def test_training_attention_equals_masked_sdpa(embedded_model, tiny_model, tok, tmp_path):
    """Training's attention (no mask: causal over right-padded rows, zero queries in front of a cached prefix)
    gives the log-probabilities, KL and gradients of transformers' sdpa with its explicit padding mask, with the
    shared prefix run once or every row whole; left-padded rows are refused. (The embedded model's architecture,
    grouped-query attention included, at 2 layers.)"""
    from conftest import tiny_random_model

    other = tiny_random_model(embedded_model, tmp_path / "tiny-1", seed=1)
    ours, ref, _, _ = load_policy(tiny_model, other, TrainParams(gradient_checkpointing=False))
    assert ours.config._attn_implementation == ref.config._attn_implementation == TRAINING_ATTENTION
    masked, masked_ref = copy.deepcopy(ours), copy.deepcopy(ref)
    for model in (masked, masked_ref):
        model.set_attn_implementation("sdpa")
    ids, mask, p_lens, c_lens = padded(prompt_rows(tok), ours.config.pad_token_id)
    assert len(set(mask.sum(1).tolist())) == 3  # three lengths: two rows carry padding
    for share in (True, False):
        out = []
        for model, reference in ((ours, ref), (masked, masked_ref)):
            model.zero_grad()
            logp, ref_logp, kl, _ = action_logprobs(model, ids, mask, p_lens, c_lens, 4, reference, share)
            (logp.sum() + kl.sum()).backward()
            out.append(((logp.detach(), ref_logp, kl.detach()),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
        (got, got_grads), (want, want_grads) = out
        assert want[2].min().item() > 1e-4  # the reference differs: the KL term has a gradient
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for name, g in want_grads.items():
            torch.testing.assert_close(got_grads[name], g, atol=1e-5 * g.abs().max().item() + 1e-8, rtol=1e-4)
    pads = (mask == 0).sum(1).tolist()
    left_ids, left_mask = (torch.stack([t[i].roll(n) for i, n in enumerate(pads)]) for t in (ids, mask))
    with pytest.raises(ValueError, match="right-padded"):
        action_logprobs(ours, left_ids, left_mask, p_lens, c_lens, 4)


def test_training_attention_leaves_sliding_window_models_alone():
    """A model with sliding-window layers keeps its attention (its mask is more than causality)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from bench.rollout import TINY
    from stages.train import use_training_attention

    for sliding, expected in ((False, TRAINING_ATTENTION), (True, "sdpa")):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**TINY, use_sliding_window=sliding, sliding_window=8,
                                                              max_window_layers=0), attn_implementation="sdpa")
        use_training_attention(model)
        assert model.config._attn_implementation == expected


def perturbed(policy, scale: float = 0.5):
    """A deep copy of `policy` with seeded noise (scale x the weights' std) added to one MLP matrix."""
    policy = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = policy.model.layers[20].mlp.down_proj.weight
        w += scale * w.std() * torch.randn(w.shape, generator=g)
    return policy


# ---------------------------------------------------------------------------------------------------------
# 7. weighted SFT
# ---------------------------------------------------------------------------------------------------------
def test_weighted_sft_step_lowers_the_objective(loaded, tok, tmp_path):
    weights = {"ep-a": (2.0, 0.5), "ep-b": (0.5, -0.3), "ep-c": (1.0, 0.1)}
    data = make_data(tmp_path, tok, THREE_EPISODES, weights)
    rows = data.to_list()
    w = {e: v[0] for e, v in weights.items()}
    policy, ref = copy.deepcopy(loaded[0]), loaded[1]
    # one whole forward per row, as sft_objective runs it: under bf16 a shared prefix rounds otherwise (its own test)
    params = TrainParams(learning_rate=1e-4, kl_coef=0.05, micro_batch_size=2, share_prefix=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=params.learning_rate)

    with torch.no_grad():
        before, ce_before, _ = sft_objective(policy, ref, rows, w, params.kl_coef)
        same_autocast, ce_autocast, kl_autocast = sft_objective(policy, ref, rows, w, params.kl_coef, autocast=True)
    metrics = train_step(policy, ref, data, params, optimizer, policy.config.pad_token_id)
    # the logged loss is the objective at the batch's start, computed as the stage computes it (its dtype)
    assert metrics["loss"] == pytest.approx(same_autocast.item(), rel=1e-3)
    assert metrics["ce"] == pytest.approx(ce_autocast.item(), rel=1e-3)
    assert abs(metrics["kl"]) < 1e-6 and abs(kl_autocast.item()) < 1e-6  # policy == reference before the step
    assert metrics["loss"] == pytest.approx(before.item(), rel=0.05)  # and close to the fp32 objective
    assert metrics["mean_weight"] == pytest.approx(sum(w.values()) / 3)
    assert metrics["sequences"] == len(rows) == 4
    assert metrics["action_tokens"] == sum(len(r["completion_ids"]) for r in rows)
    assert metrics["tokens"] == sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)
    assert metrics["grad_norm"] > 0

    with torch.no_grad():
        after, ce_after, kl_after = sft_objective(policy, ref, rows, w, params.kl_coef)
    assert after.item() < before.item() - 0.05, (before.item(), after.item())
    assert ce_after.item() < ce_before.item()
    assert kl_after.item() > 0  # the policy moved away from the reference


def test_weight_zero_rows_are_skipped_without_changing_the_step(loaded, tok, tmp_path):
    """kl_coef 0: a weight-0 row is not run (fewer sequences and tokens), and the gradient is the one that runs it
    (kl_coef 1e-30 runs every row; the KL term's gradient is 0 while policy == reference). When every row has
    weight 0, AdamW still takes its zero-gradient step (its state counts it) and the weights stay."""
    weights = {"ep-a": (2.0, 0.5), "ep-b": (0.0, -0.3), "ep-c": (1.0, 0.1)}
    data = make_data(tmp_path / "some", tok, THREE_EPISODES, weights)
    grads, metrics = {}, {}
    for kl in (0.0, 1e-30):
        policy = copy.deepcopy(loaded[0])
        params = TrainParams(learning_rate=1e-4, kl_coef=kl, micro_batch_size=2, dtype="float32")
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
        metrics[kl] = train_step(policy, loaded[1], data, params, optimizer, policy.config.pad_token_id)
        grads[kl] = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert (metrics[0.0]["sequences"], metrics[1e-30]["sequences"]) == (3, 4)
    assert metrics[0.0]["tokens"] < metrics[1e-30]["tokens"]
    assert metrics[0.0]["ce"] == pytest.approx(metrics[1e-30]["ce"], rel=1e-5)
    assert grads[0.0].abs().max() > 0
    assert torch.allclose(grads[0.0], grads[1e-30], rtol=1e-4, atol=1e-7)

    data = make_data(tmp_path / "none", tok, THREE_EPISODES, {e: (0.0, a) for e, (_, a) in weights.items()})
    policy = copy.deepcopy(loaded[0])
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=0.0)  # the stage's default decay
    m = train_step(policy, loaded[1], data, TrainParams(kl_coef=0.0), optimizer, policy.config.pad_token_id)
    assert (m["sequences"], m["tokens"], m["grad_norm"]) == (0, 0, 0.0)
    assert all(optimizer.state[p]["step"] == 1 for p in policy.parameters())
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), loaded[0].parameters()))


def test_skip_noop_turns_drops_their_cross_entropy_only(loaded, tok, tmp_path):
    """--skip-noop-turns (kl_coef 0): the no-op replies are not run, and the cross-entropy is the full one less
    exactly their terms, w_e * (-log pi(reply)) / episode_tokens / E; the other turns keep the episode's weight
    and its normaliser. The apo objective refuses the flag."""
    data = noop_data(tmp_path, tok)
    rows = data.to_list()
    noops = [r for r in rows if r["noop"]]
    metrics = {}
    for skip in (False, True):
        policy = copy.deepcopy(loaded[0])
        params = TrainParams(kl_coef=0.0, micro_batch_size=4, dtype="float32", skip_noop_turns=skip)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
        metrics[skip] = train_step(policy, loaded[1], data, params, optimizer, policy.config.pad_token_id)
    assert metrics[True]["sequences"] == metrics[False]["sequences"] - len(noops) == len(rows) - 3
    dropped = sum(2.0 * -seq_logp(loaded[0], r) / r["episode_tokens"] for r in noops) / 2
    assert dropped > 0
    assert metrics[True]["ce"] == pytest.approx(metrics[False]["ce"] - dropped, rel=1e-4)
    with pytest.raises(ValueError, match="skip-noop-turns applies to weighted-sft"):
        TrainParams(objective="apo", skip_noop_turns=True).check()


def test_without_kl_the_steps_are_cut_from_the_imitated_episodes(tok, tmp_path):
    """weighted-sft, kl_coef 0: --batch-episodes counts episodes with a row to imitate (weight > 0, and not a
    no-op under --skip-noop-turns), so no step imitates nothing. With the KL term (every row counts) or apo, or
    when nothing is imitated, the data stays whole."""
    turns = [(e, 0, PROMPTS[i % 3], COMPLETIONS[i % 3]) for i, e in enumerate(["ep-a", "ep-b", "ep-c", "ep-d"])]
    turns.append(("ep-e", 0, PROMPTS[1], "click[b0099]", "results", False))  # imitated, but a no-op
    weights = {"ep-a": (2.0, 0.5), "ep-b": (0.0, -0.3), "ep-c": (1.0, 0.1), "ep-d": (0.0, -0.2), "ep-e": (1.0, 0.1)}
    data = make_data(tmp_path, tok, turns, weights)
    kept = imitated_only(data, TrainParams(kl_coef=0.0, batch_episodes=1))
    assert kept["episode_id"] == ["ep-a", "ep-c", "ep-e"]
    assert len(episode_batches(kept["episode_id"], TrainParams(batch_episodes=1), 0)) == 3
    assert imitated_only(data, TrainParams(kl_coef=0.0, skip_noop_turns=True))["episode_id"] == ["ep-a", "ep-c"]
    for params in (TrainParams(kl_coef=0.02), TrainParams(objective="apo", kl_coef=0.0)):
        assert len(imitated_only(data, params)) == len(data) == 5
    nothing = make_data(tmp_path / "none", tok, turns, {e: (0.0, 0.0) for e in weights})
    assert len(imitated_only(nothing, TrainParams(kl_coef=0.0))) == 5


@pytest.mark.parametrize("high", [0, 1])
def test_weights_steer_the_update(loaded, tok, tmp_path, high):
    """Two episodes answer the same prompt differently; the high-weight one's log-probability rises, and rises
    more than the low-weight one's. Swapping the weights swaps the outcome."""
    turns = [("ep-0", 0, PROMPTS[0], COMPLETIONS[0]), ("ep-1", 0, PROMPTS[0], COMPLETIONS[2])]
    weights = {f"ep-{i}": (5.0 if i == high else 0.1, 0.0) for i in (0, 1)}
    data = make_data(tmp_path, tok, turns, weights)
    rows = {r["episode_id"]: r for r in data.to_list()}
    policy, ref = copy.deepcopy(loaded[0]), loaded[1]
    params = TrainParams(learning_rate=1e-4, kl_coef=0.0, micro_batch_size=1)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=params.learning_rate)
    before = {e: seq_logp(policy, r) for e, r in rows.items()}
    train_step(policy, ref, data, params, optimizer, policy.config.pad_token_id)
    gain = {e: seq_logp(policy, r) - before[e] for e, r in rows.items()}
    hi, lo = f"ep-{high}", f"ep-{1 - high}"
    assert gain[hi] > 0.1, gain
    assert gain[hi] > gain[lo], gain


# ---------------------------------------------------------------------------------------------------------
# 8. apo
# ---------------------------------------------------------------------------------------------------------
def test_apo_loss_and_gradient_match_hand_computation(loaded, tok, tmp_path):
    """The apo step's logged loss and its gradient against torch.autograd on the hand-written loss.
    Both compute in the stage's dtype: with bf16 autocast, against fp32 the log-ratios of this perturbed policy
    differ by ~0.2 nats per episode (bf16 rounding), which would hide any real error."""
    # targets well away from beta2 x the log-ratios (which fp32 puts within 0.05 of 0.3, -0.2, 0.05): a loss of ~1
    targets = {"ep-a": 1.3, "ep-b": -1.2, "ep-c": 1.05}
    data = make_data(tmp_path, tok, THREE_EPISODES, {e: (1.0, a) for e, a in targets.items()})
    rows = data.to_list()
    assert [r["apo_target"] for r in rows] == [targets[r["episode_id"]] for r in rows]
    ref = loaded[1]
    policy = perturbed(loaded[0])
    params = TrainParams(objective="apo", beta2=0.5, micro_batch_size=2, grad_clip=1e9,
                         share_prefix=False)  # a whole forward per row, as apo_objective runs it

    loss, mean_residual = apo_objective(policy, ref, rows, targets, params.beta2, autocast=True)
    loss.backward()
    want_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    want_norm = torch.sqrt(sum(g.norm() ** 2 for g in want_grads.values())).item()
    with torch.no_grad():
        _, _, kl_autocast = sft_objective(policy, ref, rows, {e: 1.0 for e in targets}, 0.0, autocast=True)
    assert loss.item() > 1e-3

    policy.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)  # the step leaves the weights; .grad stays
    metrics = train_step(policy, ref, data, params, optimizer, policy.config.pad_token_id)

    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-3, abs=1e-6)
    assert metrics["apo_residual"] == pytest.approx(mean_residual.item(), rel=1e-3, abs=1e-5)
    assert metrics["kl"] == pytest.approx(kl_autocast.item(), rel=1e-2)
    assert metrics["grad_norm"] == pytest.approx(want_norm, rel=1e-2)
    for name in ("model.norm.weight", "model.layers.20.mlp.down_proj.weight", "model.layers.5.mlp.up_proj.weight",
                 "model.embed_tokens.weight"):  # the last is tied to the output head
        got, want = dict(policy.named_parameters())[name].grad, want_grads[name]
        assert want.norm() > 0
        rel = ((got - want).norm() / want.norm()).item()
        cos = ((got * want).sum() / (got.norm() * want.norm())).item()
        assert rel < 2e-2 and cos > 0.999, (name, rel, cos)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())


# ---------------------------------------------------------------------------------------------------------
# 9. the stage: checkpoint, resume, refusals
# ---------------------------------------------------------------------------------------------------------
def episode_row(stage, goal, sample, reward, iteration=None):
    return {"episode_id": f"{RUN}/{stage}/{'' if iteration is None else iteration}/{goal}/{sample}", "run": RUN,
            "iteration": iteration, "stage": stage, "goal_idx": goal, "sample_idx": sample, "checkpoint": "c",
            "seed": 0, "reward": reward, "r_type": None, "r_att": None, "r_option": None, "r_price": None,
            "success": reward == 1.0, "n_steps": 2, "end_reason": "bought", "format_errors": 0,
            "invalid_actions": 0, "prompt_tokens": 0, "completion_tokens": 0}


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, tok):
    """A reference and a rollout folder (episodes + turns) and the real weights stage over them."""
    base = tmp_path_factory.mktemp("train-stage")
    root = base / "root"
    ref_dir, roll_dir = base / "reference", base / "rollout"
    ref_dir.mkdir(), roll_dir.mkdir()
    write_table(to_table([episode_row("reference", g, s, r) for g in (0, 1) for s, r in enumerate([0.0, 1.0])],
                         EPISODES_SCHEMA), ref_dir / "episodes.parquet")
    rollout = [episode_row("rollout", 0, 0, 1.0, 1), episode_row("rollout", 0, 1, 0.0, 1),
               episode_row("rollout", 1, 0, 0.5, 1)]
    write_table(to_table(rollout, EPISODES_SCHEMA), roll_dir / "episodes.parquet")
    turns = [turn_row(tok, rollout[0]["episode_id"], 0, PROMPTS[0], COMPLETIONS[0]),
             turn_row(tok, rollout[0]["episode_id"], 1, PROMPTS[2], COMPLETIONS[2]),
             turn_row(tok, rollout[1]["episode_id"], 0, PROMPTS[0], COMPLETIONS[1]),
             turn_row(tok, rollout[2]["episode_id"], 0, PROMPTS[1], COMPLETIONS[1])]
    write_table(to_table(turns, TURNS_SCHEMA), roll_dir / "turns.parquet")
    weights_dir = weights_stage(ref_dir, roll_dir, WeightsParams(), run=RUN, iteration=1, root=root)
    return {"root": root, "weights": weights_dir, "rollout": roll_dir}


def train_folders(root) -> list[Path]:
    return sorted(p for p in (Path(root) / "runs").rglob("train/*") if p.is_dir())


def test_train_stage_checkpoint_and_resume(stage_inputs, tiny_model, tmp_path):
    """The stage's mechanics (tables, checkpoint, resume, refusals) on a tiny model of the same architecture."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, wdir, rdir = stage_inputs["root"], stage_inputs["weights"], stage_inputs["rollout"]
    params = TrainParams(learning_rate=1e-5, micro_batch_size=4)
    first = train_stage(tiny_model, tiny_model, wdir, rdir, params, run=RUN, iteration=1, root=root)
    assert first.parent == root / "runs" / RUN / "iter=0001" / "train"
    assert sorted(p.name for p in first.iterdir()) == ["checkpoint", "manifest.json", "train_metrics.parquet"]
    assert not [p for p in root.rglob(".tmp-*")]
    ckpt = first / "checkpoint"

    # a plain Hugging Face folder: model (fp32 weights, moved by the step) and tokenizer
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    assert tokenizer(PROMPTS[0])["input_ids"] == AutoTokenizer.from_pretrained(tiny_model)(PROMPTS[0])["input_ids"]
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        trained = f.get_tensor("model.layers.0.mlp.up_proj.weight")
    assert trained.dtype == torch.float32
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not torch.equal(trained, original.model.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.float(), trained)
    del model, original

    state = torch.load(ckpt / TRAINING_STATE, weights_only=False)
    assert state["step"] == 1
    assert (state["reference"], state["objective"], state["params"]) == (
        str(tiny_model), "weighted-sft", asdict(params) | {"dtype": STAGE_DTYPE})  # the dtype that ran
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
    metrics = read_table(first / "train_metrics.parquet")
    assert metrics.schema.equals(METRICS_SCHEMA, check_metadata=False)
    (m,) = metrics.to_pylist()
    assert (m["step"], m["objective"], m["lr"], m["sequences"]) == (1, "weighted-sft", 1e-5, 4)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["summary"]["step"] == 1 and manifest["key"] == first.name
    assert manifest["inputs"]["checkpoint"] == str(tiny_model)

    # done: the same call returns the folder without training again
    mtime = (ckpt / TRAINING_STATE).stat().st_mtime_ns
    assert train_stage(tiny_model, tiny_model, wdir, rdir, params, run=RUN, iteration=1, root=root) == first
    assert (ckpt / TRAINING_STATE).stat().st_mtime_ns == mtime

    # the next iteration starts from the checkpoint and resumes its step and optimizer
    second = train_stage(ckpt, tiny_model, wdir, rdir, params, run=RUN, iteration=2, root=root)
    state2 = torch.load(second / "checkpoint" / TRAINING_STATE, weights_only=False)
    assert state2["step"] == 2
    assert {int(s["step"]) for s in state2["optimizer"]["state"].values()} == {2}  # Adam moments carried over
    assert read_table(second / "train_metrics.parquet")["step"].to_pylist() == [2]
    assert read_manifest(second)["summary"]["step"] == 2

    # a checkpoint trained against another reference (another path string to the same model) is refused
    other = tmp_path / "other-reference"
    other.symlink_to(tiny_model, target_is_directory=True)
    folders = train_folders(root)
    with pytest.raises(ValueError, match="reference") as e:
        train_stage(ckpt, other, wdir, rdir, params, run=RUN, iteration=3, root=root)
    assert "\n" not in str(e.value) and str(other) in str(e.value)
    assert train_folders(root) == folders  # nothing published
    assert not [p for p in root.rglob(".tmp-*")]
    # ... and so is one trained with another objective
    with pytest.raises(ValueError, match="objective") as e:
        load_policy(ckpt, tiny_model, TrainParams(objective="apo"))
    assert "\n" not in str(e.value)


def test_train_layers_gives_the_top_layers_the_full_models_gradient(stage_inputs, tiny_model, tok, tmp_path):
    """--train-layers 1 of the tiny model's 2: one step gives the top layer (and the final norm) exactly the
    gradient the whole model's step gives it, and nothing else a gradient; the stage's checkpoint moved only those,
    its optimizer holds only their moments, and resuming it with another --train-layers is refused."""
    from safetensors.torch import load_file

    data = make_data(tmp_path, tok, THREE_EPISODES, {"ep-a": (2.0, 0.5), "ep-b": (0.5, -0.3), "ep-c": (1.0, 0.1)})
    grads = {}
    for layers in (0, 1):
        params = TrainParams(train_layers=layers, dtype="float32", kl_coef=0.05, grad_clip=1e9)  # unclipped
        policy, ref, optimizer, _ = load_policy(tiny_model, tiny_model, params)
        train_step(policy, ref, data, params, optimizer, policy.config.pad_token_id)
        grads[layers] = {n: p.grad for n, p in policy.named_parameters()}
    top = {n for n in grads[1] if n.startswith("model.layers.1.") or n == "model.norm.weight"}
    assert top and {n for n, g in grads[1].items() if g is not None} == top  # embeddings (tied head) frozen too
    for n in top:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)

    root, wdir, rdir = stage_inputs["root"], stage_inputs["weights"], stage_inputs["rollout"]
    params = TrainParams(learning_rate=1e-3, train_layers=1)
    folder = train_stage(tiny_model, tiny_model, wdir, rdir, params, run=RUN, iteration=5, root=root)
    trained, original = load_file(folder / "checkpoint" / "model.safetensors"), \
        load_file(Path(tiny_model) / "model.safetensors")
    moved = {k for k in trained if not torch.equal(trained[k], original[k].float())}
    assert moved and moved <= top
    state = torch.load(folder / "checkpoint" / TRAINING_STATE, weights_only=False)
    assert len(state["optimizer"]["state"]) == len(top) and state["params"]["train_layers"] == 1
    with pytest.raises(ValueError, match="trained with train-layers 1, not 0: start a new run") as e:
        load_policy(folder / "checkpoint", tiny_model, TrainParams())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=re.escape(f"--train-layers 3: model '{tiny_model}' has 2 decoder layers")):
        load_policy(tiny_model, tiny_model, TrainParams(train_layers=3))


@pytest.mark.parametrize("objective", ["weighted-sft", "apo"])
def test_data_parallel_training_takes_the_one_process_steps(stage_inputs, tiny_model, objective):
    """train_processes=2 (gloo on this CPU: this process is rank 0, a spawned process rank 1): each rank takes every
    other micro-batch (apo: every episode's log-ratio gathered from both) and the gradients are summed, so two
    steps give the one-process losses, gradient norms and weights, up to the order of float sums."""
    from safetensors.torch import load_file

    root, wdir, rdir = stage_inputs["root"], stage_inputs["weights"], stage_inputs["rollout"]
    params = TrainParams(objective=objective, learning_rate=1e-4, micro_batch_size=1, epochs=2, kl_coef=0.1,
                         beta2=0.5, dtype="float32")
    folders = {n: train_stage(tiny_model, tiny_model, wdir, rdir, replace(params, train_processes=n), run=RUN,
                              iteration=7, root=root) for n in (1, 2)}
    assert folders[1] != folders[2]  # another parameter, another stage
    one, two = (read_table(folders[n] / "train_metrics.parquet").to_pylist() for n in (1, 2))
    assert [m["step"] for m in two] == [1, 2]
    for a, b in zip(one, two):
        assert (a["sequences"], a["tokens"], a["action_tokens"]) == (b["sequences"], b["tokens"], b["action_tokens"])
        for k in ("loss", "ce", "kl", "apo_residual", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-9), k  # step 2 starts from weights that differ ~1e-9
    assert one[1]["loss"] != one[0]["loss"]  # the first step moved the weights the second step saw
    w1, w2 = (load_file(folders[n] / "checkpoint" / "model.safetensors") for n in (1, 2))
    original = load_file(Path(tiny_model) / "model.safetensors")
    assert any(not torch.equal(w1[k], original[k].float()) for k in w1)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6)
    state = torch.load(folders[2] / "checkpoint" / TRAINING_STATE, weights_only=False)
    assert state["step"] == 2 and state["params"]["train_processes"] == 2


@pytest.mark.parametrize("flag,change", [
    ("objective", {"objective": "nope"}), ("learning-rate", {"learning_rate": 0.0}),
    ("learning-rate", {"learning_rate": -1e-5}), ("micro-batch-size", {"micro_batch_size": 0}),
    ("logits-chunk", {"logits_chunk": 0}), ("epochs", {"epochs": 0}), ("grad-clip", {"grad_clip": 0.0}),
    ("kl-coef", {"kl_coef": -0.1}), ("beta2", {"beta2": -1.0}), ("weight-decay", {"weight_decay": -0.01}),
    ("train-processes", {"train_processes": 0}), ("train-layers", {"train_layers": -1}),
])
def test_bad_train_params(tmp_path, flag, change):
    params = TrainParams(**change)
    with pytest.raises(ValueError, match=flag) as e:
        params.check()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=flag):  # refused before anything is read or loaded
        train_stage(tmp_path / "no-checkpoint", tmp_path / "no-reference", tmp_path / "w", tmp_path / "r", params,
                    run=RUN, iteration=1, root=tmp_path / "root")
    assert not (tmp_path / "root" / "runs").exists()
