"""Train: the policy update of an iteration on the policy's own sampled actions, read top to bottom. The sft
warm start (stages/sft.py) is the same stage on oracle demonstrations.

Data: every model reply of the iteration's rollout joined with its episode's weight (train_data.sql), as a
Hugging Face `datasets.Dataset`. A row is one sequence, prompt_ids + completion_ids exactly as sampled; only the
completion (action) tokens carry loss, so observations and prompts are masked by construction.

Objectives (E = episodes in the batch, T_e = action tokens of episode e, A_e = r_e - V*(goal_e)):
  weighted-sft  (1/E) sum_e w_e * mean_{t in T_e} m_t CE_t  +  kl_coef * (1/E) sum_e mean_{t in T_e} KL_t
                where KL_t = KL(pi(.|s_t) || pi_ref(.|s_t)) over the whole vocabulary (0 at initialisation)
                and m_t = 1, or 0 on a reply that changed nothing with --skip-noop-turns.
  apo           (1/E) sum_e (beta2 * sum_{t in T_e} (log pi - log pi_ref)(a_t) - A_e)^2     (the paper's loss)
Both decompose over sequences, so micro-batches of sequences accumulate gradients. For `apo` the squared
residual couples an episode's turns: a first no-grad pass computes each episode's log-ratio sum, and the
backward pass uses the exact gradient 2 * beta2 * (beta2 * Delta_e - A_e) * grad(log pi), per token.

Memory: the body runs once per micro-batch; logits are computed only at action positions, in chunks of
`logits_chunk` positions, never for the whole vocabulary x sequence (bench/train measures the difference).
Master weights and AdamW state are fp32; forwards run under autocast to `dtype` (`auto`: the dtype the hardware
computes natively, policy/hardware.py; float32 runs without autocast; float16 adds loss scaling). The checkpoint
keeps fp32 weights (bf16 would round away updates of lr 5e-6) and `training_state.pt` (step, optimizer, RNG,
config).
"""
from __future__ import annotations

import json
import logging
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tqdm import tqdm

from policy.hardware import DTYPES, resolve_dtype, torch_dtype
from storage.faults import fault_point
from storage.layout import root_relative
from storage.parquet import write_table
from stages.rollout import PROMPT_RECORD
from storage.stages import code_version, reuse_done, stage_dir, stage_key, stage_output

log = logging.getLogger(__name__)
OBJECTIVES = ("weighted-sft", "apo")
TRAINING_STATE = "training_state.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")
METRICS_SCHEMA = pa.schema([
    ("step", pa.int32()), ("objective", pa.string()), ("loss", pa.float64()), ("ce", pa.float64()),
    ("kl", pa.float64()), ("apo_residual", pa.float64()), ("mean_weight", pa.float64()), ("lr", pa.float64()),
    ("grad_norm", pa.float64()), ("sequences", pa.int32()), ("action_tokens", pa.int64()),
    ("tokens", pa.int64()), ("seconds", pa.float64()), ("tokens_per_s", pa.float64()),
    ("peak_mem_mb", pa.float64()),
])


@dataclass(frozen=True)
class TrainParams:
    objective: str = "weighted-sft"
    """weighted-sft (the seed's method) or apo (the paper's least-squares objective)."""
    learning_rate: float = 5e-6
    """AdamW learning rate (constant)."""
    kl_coef: float = 0.02
    """Weight of KL(pi || pi_ref) in weighted-sft."""
    skip_noop_turns: bool = False
    """weighted-sft: imitate none of an episode's replies that changed nothing (train_data.sql's `noop`: an
    invalid action, or a re-click of an option already selected); its other turns keep the episode's weight. A
    sampled episode that bought the right product after five invalid clicks otherwise teaches the five clicks."""
    beta2: float = 1e-3
    """Scale of the log-ratio in the apo objective (the paper's beta2)."""
    epochs: int = 1
    """Passes over the iteration's episodes."""
    batch_episodes: int = 0
    """Episodes per optimizer step, shuffled each epoch; 0: all of them (one step per epoch). With weighted-sft
    and kl_coef 0 only the imitated episodes (a row of weight > 0) count."""
    micro_batch_size: int = 4
    """Sequences per forward/backward; gradients accumulate over micro-batches."""
    logits_chunk: int = 1024
    """Action positions whose logits are materialised at once."""
    share_prefix: bool = True
    """Run a micro-batch's common leading tokens (the system text and worked example every prompt opens with, a
    quarter of a WebShop prompt) once instead of once per row (`body_states`); off under gradient checkpointing."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: far less memory for some speed (bench/train measures)."""
    train_layers: int = 0
    """Train only the top N decoder layers (and the final norm); the embeddings, the output head tied to them and
    the layers below stay frozen, so no activation below is kept and the backward pass stops at the lowest trained
    layer (bench/train measures the speed). 0 trains every parameter."""
    dtype: str = "auto"
    """Compute dtype of training forwards over fp32 master weights: auto (bfloat16 where the hardware computes
    it natively, else float32; float16 on pre-Ampere GPUs), float32, bfloat16 or float16. float32 shows
    updates smaller than bf16's resolution (lr 5e-6) in log pi - log pi_ref at once."""
    seed: int = 0
    """Seeds torch before each step (models with dropout); the RNG state is saved for resumes."""
    train_processes: int = 1
    """Data-parallel training processes on this node, as torchrun starts them (one per GPU, NCCL; on a CPU, gloo):
    each takes every N-th micro-batch and the gradients are summed across them before each optimizer step, so the
    update is the one-process update up to the order of float sums."""

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        for name in ("learning_rate", "micro_batch_size", "logits_chunk", "epochs", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("kl_coef", "beta2", "weight_decay", "batch_episodes", "train_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.skip_noop_turns and self.objective != "weighted-sft":
            raise ValueError(f"--skip-noop-turns applies to weighted-sft; the {self.objective} objective scores "
                             "whole episodes")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.train_processes < 1:
            raise ValueError(f"--train-processes must be >= 1, got {self.train_processes}")
        if torch.cuda.is_available() and self.train_processes > torch.cuda.device_count():
            raise ValueError(f"--train-processes {self.train_processes}: this node has "
                             f"{torch.cuda.device_count()} GPUs (one process per GPU)")


def load_train_data(turns: Path, weights: Path):
    """The training rows (train_data.sql) as a `datasets.Dataset`."""
    import datasets

    con = duckdb.connect()
    try:
        table = con.sql((Path(__file__).parent / "train_data.sql").read_text(),
                        params={"turns": str(turns), "weights": str(weights)}).to_arrow_table()
    except duckdb.Error as e:  # a missing or corrupt table: one line naming both inputs
        raise ValueError(f"training data from {turns} and {weights}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    if table.num_rows == 0:
        raise ValueError(f"{weights}: no weighted turns to train on")
    return datasets.Dataset(table)


def shared_prefix_len(input_ids, prompt_lens) -> int:
    """Leading tokens every row of the batch has in common, stopping before each row's last prompt token (the
    first position whose state predicts an action). Prompts all open with the system text and worked example."""
    if len(input_ids) < 2:
        return 0
    limit = min(prompt_lens) - 1
    differs = (input_ids[:, :limit] != input_ids[:1, :limit]).any(0)
    return int(differs.float().argmax()) if differs.any() else limit


TRAINING_ATTENTION = "right_padded_causal"


def right_padded_causal_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of a training batch (`_batch`: right-padded rows; `body_states`: rows that may follow a cached
    shared prefix), with no mask. Right padding needs none: a pad never comes before a real token, so causality
    alone keeps every pad out of every real token's attention (what a pad's own query computes is never read).
    Queries after k - q cached keys are the last q of k positions, which is top-left causal attention once k - q
    zero queries are put in front of them (their rows are dropped). Without a mask the kernels skip the blocks
    above the diagonal; with transformers' explicit mask (sdpa) they compute every query x key score, the masked
    ones too. The same log-probabilities, gradients equal up to float rounding; on the warm start's own first four
    steps 3.8% faster in less memory, on bench.train's 4 rows of 800 tokens 7% (README, "Training step")."""
    q, k = query.shape[2], key.shape[2]
    if k > q:
        query = F.pad(query, (0, 0, k - q, 0))
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out[:, :, k - q:].transpose(1, 2).contiguous(), None


def use_training_attention(model) -> None:
    """Switch `model` to `right_padded_causal_attention` (only right-padded batches: training's, not generation's).
    A model with sliding-window layers keeps its attention: their mask is more than causality."""
    from transformers import AttentionInterface

    if any(getattr(m, "sliding_window", None) for m in model.modules()):
        return
    AttentionInterface.register(TRAINING_ATTENTION, right_padded_causal_attention)
    model.set_attn_implementation(TRAINING_ATTENTION)


def body_states(model, input_ids, attention_mask, prefix: int):
    """The body's last hidden states of every row from position `prefix` on. The first `prefix` tokens, the same
    in every row, run once (batch 1) and each row attends to their keys and values (repeated, so gradients from
    every row flow back into the one prefix pass); the states equal a full forward's up to float rounding. HF's
    gradient checkpointing drops caches, so a checkpointed model in training runs every row whole."""
    if prefix == 0 or (model.training and getattr(model, "is_gradient_checkpointing", False)):
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, prefix:]
    cache = model.base_model(input_ids=input_ids[:1, :prefix], use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(input_ids))
    return model.base_model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask,
                            past_key_values=cache, use_cache=True).last_hidden_state


def action_logprobs(model, input_ids, attention_mask, prompt_lens, completion_lens, chunk: int,
                    ref_model=None, share_prefix: bool = True):
    """Log-probabilities of the completion tokens of each row (right-padded sequences) under `model`,
    and with `ref_model` also the reference's and the per-token KL(model || ref) over the vocabulary.
    `share_prefix`: the rows' common leading tokens run once (`body_states`).

    Returns (logp [N], ref_logp [N] | None, kl [N] | None, row [N]): N = all action tokens of the batch in
    row order; `row` says which sequence each belongs to.
    """
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("action_logprobs takes right-padded rows (a row's tokens, then its padding)")
    rows, positions = [], []
    for r, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        rows += [r] * c
        positions += range(p - 1, p - 1 + c)  # the state before each action token predicts it
    rows_t, pos_t = torch.tensor(rows), torch.tensor(positions)
    targets = input_ids[rows_t, pos_t + 1]
    prefix = shared_prefix_len(input_ids, prompt_lens) if share_prefix else 0
    hidden = body_states(model, input_ids, attention_mask, prefix)[rows_t, pos_t - prefix]
    ref_hidden = None
    if ref_model is not None:
        with torch.no_grad():
            ref_hidden = body_states(ref_model, input_ids, attention_mask, prefix)[rows_t, pos_t - prefix]
    head = model.get_output_embeddings()
    logps, ref_logps, kls = [], [], []
    for s in range(0, len(rows), chunk):
        logits = F.log_softmax(head(hidden[s:s + chunk]).float(), dim=-1)
        tgt = targets[s:s + chunk]
        logps.append(logits.gather(1, tgt[:, None])[:, 0])
        if ref_model is not None:
            with torch.no_grad():
                ref = F.log_softmax(ref_model.get_output_embeddings()(ref_hidden[s:s + chunk]).float(), dim=-1)
            ref_logps.append(ref.gather(1, tgt[:, None])[:, 0])
            kls.append((logits.exp() * (logits - ref)).sum(-1))
    cat = torch.cat
    return cat(logps), (cat(ref_logps) if ref_logps else None), (cat(kls) if kls else None), rows_t


def _batch(rows: list[dict], pad_id: int):
    seqs = [r["prompt_ids"] + r["completion_ids"] for r in rows]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, [len(r["prompt_ids"]) for r in rows], [len(r["completion_ids"]) for r in rows]


def _peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def imitation_weight(row: dict, params: TrainParams) -> float:
    """The cross-entropy's weight of a training row: its episode's weight, or 0 for a reply that changed nothing
    under --skip-noop-turns."""
    return 0.0 if params.skip_noop_turns and row["noop"] else row["weight"]


def imitation_only(params: TrainParams) -> bool:
    """weighted-sft without the KL term: a row of imitation weight 0 adds nothing to the loss or the gradient."""
    return params.objective == "weighted-sft" and params.kl_coef == 0


def imitated_only(data, params: TrainParams):
    """weighted-sft without the KL term: only the rows of imitation weight > 0 enter the loss, so the steps are
    cut from the episodes with such a row and --batch-episodes counts imitated episodes. Cut from all of them,
    an iteration that imitates 21 of 128 episodes in steps of 8 would take 16 steps, some imitating nothing yet
    moving the weights by AdamW's momentum. With nothing to imitate, `data` is kept (zero-gradient steps)."""
    if not imitation_only(params):
        return data
    keep = [i for i, r in enumerate(data.select_columns(["weight", "noop"]).to_list())
            if imitation_weight(r, params) != 0.0]
    return data.select(keep) if keep else data


def train_step(policy, ref_model, data, params: TrainParams, optimizer, pad_id: int, scaler=None) -> dict:
    """One optimizer step over all rows of `data` (gradient accumulation over micro-batches). `scaler`: the
    stage's loss scaler (float16 only, see `loss_scaler`)."""
    device = next(policy.parameters()).device
    only_weights = imitation_only(params)
    if only_weights:
        ref_model = None  # nothing uses the reference: skip its forward (a third of the step)
    scaler = scaler or loss_scaler(params, device.type)
    dtype = resolve_dtype(params.dtype, device.type)
    autocast = torch.autocast(device.type, dtype=torch_dtype(dtype), enabled=dtype != "float32")
    data = data.to_list()
    episodes = sorted({r["episode_id"] for r in data})
    n_episodes = len(episodes)
    for r in data:
        r["imitation"] = imitation_weight(r, params)
    # Without the KL term a row of imitation weight 0 (--skip-degenerate, --min-reward, --skip-noop-turns) adds 0
    # to the loss and the gradient: skip its forward and backward. n_episodes still counts its episode, so the
    # step is the same.
    trained = [r for r in data if r["imitation"] != 0.0] if only_weights else list(data)
    # Longest first, so micro-batches hold sequences of similar length (little padding).
    trained.sort(key=lambda r: -(len(r["prompt_ids"]) + len(r["completion_ids"])))
    batches = [trained[s:s + params.micro_batch_size] for s in range(0, len(trained), params.micro_batch_size)]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    batches = batches[rank::world]  # data-parallel: this rank's share of the micro-batches

    delta = {}  # apo: each episode's sum of log pi - log pi_ref over its action tokens, before the update
    if params.objective == "apo":
        with torch.no_grad(), autocast:
            for rows in batches:
                ids, mask, p_lens, c_lens = _batch(rows, pad_id)
                logp, ref_logp, _, row = action_logprobs(policy, ids.to(device), mask.to(device), p_lens, c_lens,
                                                         params.logits_chunk, ref_model, params.share_prefix)
                for r, d in zip(row.tolist(), (logp - ref_logp).tolist()):
                    delta[rows[r]["episode_id"]] = delta.get(rows[r]["episode_id"], 0.0) + d
        if world > 1:  # an episode's turns may sit in several ranks' micro-batches
            parts = [None] * world
            dist.all_gather_object(parts, delta)
            delta = {}
            for part in parts:
                for e, d in part.items():
                    delta[e] = delta.get(e, 0.0) + d

    start, tokens, action_tokens = time.perf_counter(), 0, 0
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "apo_residual": 0.0}
    optimizer.zero_grad(set_to_none=True)
    for rows in batches:
        ids, mask, p_lens, c_lens = _batch(rows, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        tokens += int(mask.sum())
        action_tokens += sum(c_lens)
        with autocast:
            logp, ref_logp, kl, row = action_logprobs(policy, ids, mask, p_lens, c_lens, params.logits_chunk,
                                                      ref_model, params.share_prefix)
        row = row.to(device)
        # Per-token scale that turns sums over tokens into the per-episode means / sums of the objective.
        per_ep_tokens = torch.tensor([rows[r]["episode_tokens"] for r in row.tolist()], device=device)
        if params.objective == "weighted-sft":
            weight = torch.tensor([rows[r]["imitation"] for r in row.tolist()], device=device)
            ce = (-logp * weight / per_ep_tokens).sum() / n_episodes
            kl_term = (kl / per_ep_tokens).sum() / n_episodes if kl is not None else torch.zeros((), device=device)
            loss = ce + params.kl_coef * kl_term
            sums["ce"] += ce.item()
            sums["kl"] += kl_term.item()
            sums["loss"] += loss.item()
        else:
            residual = torch.tensor([params.beta2 * delta[rows[r]["episode_id"]] - rows[r]["apo_target"]
                                     for r in row.tolist()], device=device)
            # d/dtheta (beta2*Delta - A)^2 = 2*beta2*(beta2*Delta - A) * sum_t dlogpi_t: a surrogate with that
            # gradient; its value is not the loss (the loss is logged from the residuals below).
            loss = (2 * params.beta2 * residual * logp).sum() / n_episodes
            sums["kl"] += ((kl / per_ep_tokens).sum() / n_episodes).item()
            sums["ce"] += ((-logp / per_ep_tokens).sum() / n_episodes).item()
        scaler.scale(loss).backward()
    for p in policy.parameters():  # no row trained here: AdamW takes the step of a zero gradient, as it would
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    if world > 1:
        tokens, action_tokens = _sum_across_ranks(policy, sums, tokens, action_tokens, device)
    if params.objective == "apo":
        targets = {r["episode_id"]: r["apo_target"] for r in data}
        residuals = [params.beta2 * delta[e] - targets[e] for e in episodes]
        sums["loss"] = sum(x * x for x in residuals) / n_episodes
        sums["apo_residual"] = sum(residuals) / n_episodes
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), params.grad_clip).item()
    scaler.step(optimizer)  # float16: skipped (and logged as grad_norm inf) when a gradient overflowed
    scaler.update()
    seconds = time.perf_counter() - start
    weights = {r["episode_id"]: r["weight"] for r in data}
    return {**sums, "mean_weight": sum(weights.values()) / n_episodes, "grad_norm": grad_norm,
            "sequences": len(trained), "action_tokens": action_tokens, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_mem_mb": _peak_mem_mb()}


def _sum_across_ranks(policy, sums: dict, tokens: int, action_tokens: int, device) -> tuple[int, int]:
    """Data-parallel: every rank's gradients and loss parts summed (the objectives are sums over episodes already
    divided by the global episode count, so the sum is the one-process gradient); returns the summed token
    counts. A parameter without a gradient on this rank (no micro-batch) adds zeros."""
    for p in policy.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
    names = sorted(sums)
    totals_t = torch.tensor([sums[k] for k in names] + [tokens, action_tokens], dtype=torch.float64, device=device)
    dist.all_reduce(totals_t)
    for k, v in zip(names, totals_t.tolist()):
        sums[k] = v
    return int(totals_t[-2].item()), int(totals_t[-1].item())


def loss_scaler(params: TrainParams, device_type: str):
    """float16 gradients underflow without loss scaling; for other dtypes the scaler does nothing."""
    return torch.amp.GradScaler(device_type, enabled=resolve_dtype(params.dtype, device_type) == "float16")


def load_policy(checkpoint: Path, reference: Path, params: TrainParams, root=None, device: str | None = None):
    """(policy trainable, reference frozen, optimizer, start step), both fp32, on `device` (default: the GPU if
    any, else the CPU). A checkpoint written by this stage resumes its optimizer and step; one trained from another
    reference model is refused (references are compared as `root_relative` paths under the storage `root`)."""
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).train()
    if params.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    # The reference runs exactly like the policy (fp32 weights, same autocast), so KL is 0 at initialisation.
    ref_model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).to(device).eval()
    ref_model.requires_grad_(False)
    for model in (policy, ref_model):
        use_training_attention(model)
    if policy.config.vocab_size != ref_model.config.vocab_size or \
            policy.config.model_type != ref_model.config.model_type:
        raise ValueError(f"checkpoint {checkpoint} ({policy.config.model_type}, vocab {policy.config.vocab_size}) "
                         f"does not match reference {reference} ({ref_model.config.model_type}, "
                         f"vocab {ref_model.config.vocab_size})")
    if params.train_layers:
        freeze_below(policy, params.train_layers)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=params.learning_rate,
                                  weight_decay=params.weight_decay)
    step = 0
    state_path = Path(checkpoint) / TRAINING_STATE
    state = torch.load(state_path, weights_only=False) if state_path.is_file() else None
    # A warm start (the sft stage) is a new starting model, not a run to resume: fresh optimizer, step 0.
    if state is not None and state.get("stage", "train") == "train":
        if state["reference"] != root_relative(reference, root):
            raise ValueError(f"checkpoint {checkpoint} was trained against reference {state['reference']}, "
                             f"not {reference}: start a new run")
        for name in ("objective", "train_layers"):  # the optimizer state holds the trained parameters' moments
            trained = state["params"].get(name, getattr(TrainParams, name))  # older states: the default
            if trained != getattr(params, name):
                raise ValueError(f"checkpoint {checkpoint} was trained with {name.replace('_', '-')} {trained}, "
                                 f"not {getattr(params, name)}: start a new run")
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a replay with another learning rate uses the new one
            group["lr"] = params.learning_rate
        step = state["step"]
        torch.set_rng_state(state["rng"])
    return policy, ref_model, optimizer, step


def check_train_layers(train_layers: int, layers: int, model: str) -> None:
    """--train-layers names at most the model's decoder layers (one clear line if not)."""
    if train_layers > layers:
        raise ValueError(f"--train-layers {train_layers}: model {model!r} has {layers} decoder layers")


def freeze_below(policy, train_layers: int) -> None:
    """Gradients only for the top `train_layers` decoder layers, the final norm and an output head of its own (a
    head tied to the input embeddings, as SmolLM2's, stays frozen with them)."""
    body = policy.base_model
    check_train_layers(train_layers, len(body.layers), policy.config.name_or_path)
    policy.requires_grad_(False)
    for module in (*body.layers[-train_layers:], body.norm):
        module.requires_grad_(True)
    head = policy.get_output_embeddings()
    if head.weight is not policy.get_input_embeddings().weight:
        head.requires_grad_(True)


def save_checkpoint(policy, optimizer, step: int, source: Path, reference: str, params: TrainParams,
                    out: Path, stage: str = "train", prompt: dict | None = None) -> None:
    """The checkpoint folder: model, tokenizer, training_state.pt (step, optimizer, RNG, `reference` as
    `root_relative` stores it, objective, params, stage) and, when given, the prompt format of the data
    (stages.rollout.PROMPT_RECORD: sampling with another is refused)."""
    policy.save_pretrained(out)
    if prompt is not None:
        (out / PROMPT_RECORD).write_text(json.dumps(prompt, sort_keys=True) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, out / name)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                "reference": reference, "objective": params.objective, "params": asdict(params),
                "stage": stage},
               out / TRAINING_STATE)


def episode_batches(episode_ids: list[str], params: TrainParams, epoch: int) -> list[list[int]]:
    """Row indices of each optimizer step of one epoch: all rows at once, or `batch_episodes` whole episodes
    per step in an order shuffled by (seed, epoch), so a resumed or replayed stage takes the same steps."""
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(episode_ids):
        rows.setdefault(e, []).append(i)
    episodes = sorted(rows)
    if not params.batch_episodes:
        return [[i for e in episodes for i in rows[e]]]
    random.Random(params.seed * 1000 + epoch).shuffle(episodes)
    size = params.batch_episodes
    return [[i for e in episodes[s:s + size] for i in rows[e]] for s in range(0, len(episodes), size)]


def totals(metrics: list[dict]) -> dict:
    """The stage's cost over all its steps (a warm start takes many): tokens, seconds, tokens/s."""
    tokens, seconds = sum(m["tokens"] for m in metrics), sum(m["seconds"] for m in metrics)
    return {"total_tokens": tokens, "total_seconds": round(seconds, 2),
            "total_tokens_per_s": tokens / seconds if seconds else None}


def _train(checkpoint: Path, reference: Path, data, params: TrainParams, root, stage: str, progress: bool,
           rank: int = 0, device: str | None = None):
    """The stage's optimizer steps over `data` (load_train_data) in this process, rank `rank` of the data-parallel
    group if one is set up: (policy, optimizer, last step, metrics of each step; rank 0 logs them)."""
    policy, ref_model, optimizer, step = load_policy(checkpoint, reference, params, root, device)
    torch.manual_seed(params.seed + step)
    pad_id = policy.config.pad_token_id if policy.config.pad_token_id is not None else 0
    data = imitated_only(data, params)
    steps = [b for epoch in range(params.epochs) for b in episode_batches(data["episode_id"], params, epoch)]
    metrics, scaler = [], loss_scaler(params, next(policy.parameters()).device.type)
    bar = tqdm(steps, desc=stage, unit="step", disable=not progress or rank > 0, leave=False)
    for rows in bar:
        step += 1
        m = train_step(policy, ref_model, data.select(rows), params, optimizer, pad_id, scaler)
        metrics.append({"step": step, "objective": params.objective, "lr": params.learning_rate, **m})
        if rank > 0:
            continue
        fault_point(f"{stage}:step")
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}")
        log.info("%s step %d: loss %.4f ce %.4f kl %.5f apo_residual %.4f mean_weight %.3f grad_norm %.3f "
                 "| %d seq, %d tokens, %.0f tok/s, peak %.0f MiB", stage, step, m["loss"], m["ce"], m["kl"],
                 m["apo_residual"], m["mean_weight"], m["grad_norm"], m["sequences"], m["tokens"],
                 m["tokens_per_s"], m["peak_mem_mb"])
    bar.close()
    return policy, optimizer, step, metrics


RANK_TIMEOUT = timedelta(minutes=10)  # a rank that died leaves the others waiting at a collective this long


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_ranks(checkpoint: Path, reference: Path, data, data_paths: tuple[Path, Path], params: TrainParams,
                 root, stage: str, progress: bool):
    """`params.train_processes` data-parallel ranks on this node: this process is rank 0 (it keeps the trained
    policy and writes the checkpoint), ranks 1.. are started fresh (spawn), as torchrun would, and meet it over a
    local TCP rendezvous; NCCL on GPUs (rank r on GPU r), gloo on a CPU (the cores shared among the ranks). A rank
    that fails fails the stage."""
    world = params.train_processes
    address = f"tcp://127.0.0.1:{free_port()}"
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, threads // world))
    context = torch.multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_rank_main, args=(rank, world, address, torch.get_num_threads(), checkpoint,
                                                      reference, data_paths, params, root, stage), daemon=True)
             for rank in range(1, world)]
    for p in ranks:
        p.start()
    try:
        _join_group(0, world, address)
        result = _train(checkpoint, reference, data, params, root, stage, progress, 0, _rank_device(0))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        for p in ranks:
            p.join(timeout=RANK_TIMEOUT.total_seconds())
            if p.is_alive():
                p.kill()
    failed = [f"rank {r} exited with {p.exitcode}" for r, p in enumerate(ranks, 1) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{stage}: data-parallel training failed: {', '.join(failed)}")
    return result


def _rank_device(rank: int) -> str:
    return f"cuda:{rank}" if torch.cuda.is_available() else "cpu"


def _join_group(rank: int, world: int, address: str) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=RANK_TIMEOUT)


def _rank_main(rank: int, world: int, address: str, threads: int, checkpoint: Path, reference: Path,
               data_paths: tuple[Path, Path], params: TrainParams, root, stage: str) -> None:
    """A data-parallel rank other than 0: the same steps on its share of each step's micro-batches."""
    torch.set_num_threads(threads)
    _join_group(rank, world, address)
    try:
        _train(checkpoint, reference, load_train_data(*data_paths), params, root, stage, False, rank,
               _rank_device(rank))
    finally:
        dist.destroy_process_group()


def train_stage(checkpoint: Path, reference: Path, weights_dir: Path, rollout_dir: Path, params: TrainParams, *,
                run: str, iteration: int | None, root=None, stage: str = "train", force: bool = False,
                cached_only: bool = False, progress: bool = True, prompt: dict | None = None,
                before_training=None) -> Path:
    """Run (or reuse) one training stage; returns its folder (checkpoint/, train_metrics.parquet).

    `stage` is "train" (an iteration's update) or "sft" (the warm start on demonstrations, iteration None);
    `force` recomputes a done stage; `prompt`, the prompt format of the rollout's turns
    (RolloutParams.prompt_format), is recorded in the checkpoint; `before_training()` is called when the stage
    trains, not when it is reused (the pipeline frees its sampling engine's memory there)."""
    params.check()
    params = replace(params, dtype=resolve_dtype(params.dtype))  # the key names the dtype that really ran
    inputs = {"checkpoint": root_relative(checkpoint, root), "reference": root_relative(reference, root),
              "weights": Path(weights_dir).name,
              "rollout": Path(rollout_dir).name}
    key = stage_key(asdict(params), inputs, code_version("stages/train.py", "stages/train_data.sql"))
    folder = stage_dir(run, stage, key, iteration, root)
    if reuse_done(folder, stage, force, cached_only):
        return folder
    if before_training is not None:
        before_training()
    data_paths = (Path(rollout_dir) / "turns.parquet", Path(weights_dir) / "weights.parquet")
    data = load_train_data(*data_paths)
    if params.train_processes > 1:
        policy, optimizer, step, metrics = _train_ranks(Path(checkpoint), Path(reference), data, data_paths, params,
                                                        root, stage, progress)
    else:
        policy, optimizer, step, metrics = _train(Path(checkpoint), Path(reference), data, params, root, stage,
                                                  progress)
    manifest = {"stage": stage, "run": run, "iteration": iteration, "key": key, "params": asdict(params),
                "inputs": inputs, "summary": {"step": step, "steps": len(metrics), **metrics[-1], **totals(metrics)}}
    with stage_output(folder, manifest) as tmp:
        save_checkpoint(policy, optimizer, step, Path(checkpoint), inputs["reference"], params, tmp / "checkpoint",
                        stage, prompt)
        write_table(pa.Table.from_pylist(metrics, schema=METRICS_SCHEMA), tmp / "train_metrics.parquet")
    return folder
