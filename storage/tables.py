"""Schemas of the run tables. Every stage writes Parquet with exactly these columns, so DuckDB views, the
trainer and users' queries agree on names and types.

episodes: one row per episode (reference, rollout and eval stages share it).
    episode_id      "<run>/<stage>/<iteration>/<goal_idx>/<sample_idx>", unique within a storage root
    run, iteration, stage, goal_idx, sample_idx
    checkpoint      the model folder that acted (an HF folder path)
    seed            the stage's sampling seed
    reward          the environment's reward in [0, 1] (0 unless the episode bought)
    r_type, r_att, r_option, r_price   reward parts from upstream's `get_reward` (null when not bought /
                    the goal has no options)
    success         reward == 1
    n_steps         environment steps taken (every reply is a step, invalid or not)
    end_reason      bought | step_cap | context (prompt did not fit) | engine_error
    format_errors   replies that held no search[...] / click[...] (the optional format penalty counts these)
    invalid_actions actions the environment rejected (unknown button, search[] ...), format errors included
    prompt_tokens, completion_tokens   summed over the turns

turns: one row per model reply.
    episode_id, turn (0-based)
    page            page kind the reply was made on: search | results | item | sub
    observation     the page text the model saw
    prompt_ids      the exact prompt token ids given to the engine (chat template applied)
    completion_ids  the sampled token ids, as the engine returned them
    completion_logprobs  log-probability of each sampled id under the acting model (raw, temperature 1)
    completion_text decode(completion_ids)
    action          the parsed action sent to the environment ("" for a format error)
    valid           whether the environment accepted it
"""
from __future__ import annotations

import pyarrow as pa

EPISODES_SCHEMA = pa.schema([
    ("episode_id", pa.string()), ("run", pa.string()), ("iteration", pa.int32()), ("stage", pa.string()),
    ("goal_idx", pa.int32()), ("sample_idx", pa.int32()), ("checkpoint", pa.string()), ("seed", pa.int64()),
    ("reward", pa.float64()), ("r_type", pa.float64()), ("r_att", pa.float64()), ("r_option", pa.float64()),
    ("r_price", pa.float64()), ("success", pa.bool_()), ("n_steps", pa.int32()), ("end_reason", pa.string()),
    ("format_errors", pa.int32()), ("invalid_actions", pa.int32()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
])

TURNS_SCHEMA = pa.schema([
    ("episode_id", pa.string()), ("turn", pa.int32()), ("page", pa.string()), ("observation", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())), ("completion_ids", pa.list_(pa.int32())),
    ("completion_logprobs", pa.list_(pa.float32())), ("completion_text", pa.string()), ("action", pa.string()),
    ("valid", pa.bool_()),
])


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with exactly the schema's columns) as a table; a missing or extra column is an error."""
    names = set(schema.names)
    for i, row in enumerate(rows):
        if row.keys() != names:
            raise ValueError(f"row {i}: columns {sorted(set(row) ^ names)} do not match the schema")
    return pa.Table.from_pylist(rows, schema=schema)
