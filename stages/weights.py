"""Weights: DuckDB SQL over the reference and rollout episode tables (the SQL is in the .sql files beside).

    v_star.parquet       goal_idx, n_ref, ref_successes, ref_mean, ref_max, ref_max_reward, v_star
                         (weights_v_star.sql; ref_* of r = reward - penalty, ref_max_reward of the reward;
                         without a reference pass, weights_no_reference.sql: V* = 0)
    weights.parquet      episode_id, goal_idx, sample_idx, reward, r, v_star, advantage, adv_norm, weight
                         (weights.sql)
    diagnostics.parquet  check, goal_idx, value, advice: goals whose V* is 0 (no reference reward at all) and
                         batches whose advantages are all negative, the two ways the weights stop teaching
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.parquet import write_table
from storage.stages import code_version, reuse_done, stage_dir, stage_key, stage_output

log = logging.getLogger(__name__)
SQL_DIR = Path(__file__).parent

DIAGNOSTICS_SCHEMA = pa.schema([("check", pa.string()), ("goal_idx", pa.int32()), ("value", pa.float64()),
                                ("advice", pa.string())])
V_STAR_ZERO_ADVICE = "no reference sample earned any reward: raise --v-star-samples or lower --num-products"
ALL_NEGATIVE_ADVICE = ("every rollout did worse than V*: check the share of valid actions in turns, "
                       "raise --temperature")


ADV_NORMS = ("batch", "goal")


@dataclass(frozen=True)
class WeightsParams:
    beta: float = 0.5
    """Temperature of the smooth max in V* = beta * ln mean exp(r / beta); > 0."""
    adv_clip: float = 3.0
    """Normalised advantages are clipped to +-adv_clip; > 0."""
    format_penalty: float = 0.0
    """Subtracted from the reward once per reply that held no action (0: no penalty)."""
    adv_norm: str = "batch"
    """Advantages are normalised over the batch (the seed's rule) or over each goal's episodes (goal)."""
    skip_degenerate: bool = False
    """Weight 0 (no imitation) for the episodes of a normalisation group whose advantages are all equal."""
    min_reward: float = 0.0
    """Weight 0 (no imitation; the KL term still counts) for episodes whose environment reward is below this:
    1.0 imitates only exact purchases, as rejection-sampling fine-tuning does; 0 keeps the seed's rule."""

    def check(self) -> None:
        if self.adv_norm not in ADV_NORMS:
            raise ValueError(f"adv-norm {self.adv_norm!r} is not one of {', '.join(ADV_NORMS)}")
        for name in ("beta", "adv_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.format_penalty < 0:
            raise ValueError(f"format-penalty must be >= 0, got {self.format_penalty}")
        if not 0.0 <= self.min_reward <= 1.0:
            raise ValueError(f"min-reward must be in [0, 1] (the environment's reward range), "
                             f"got {self.min_reward}")


def compute_weights(reference: list[Path], rollout: list[Path], params: WeightsParams
                    ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(weights, v_star, diagnostics) from the reference and rollout episodes.parquet files; no reference files:
    V* = 0 (--v-star-samples 0)."""
    params.check()
    con = duckdb.connect()  # one connection for the stage: v_star is a temp table the second query joins
    try:
        rollout_files = [str(p) for p in rollout]
        if reference:
            v_star = con.sql((SQL_DIR / "weights_v_star.sql").read_text(),
                             params={"beta": params.beta, "format_penalty": params.format_penalty,
                                     "reference": [str(p) for p in reference],
                                     "rollout": rollout_files}).to_arrow_table()
        else:
            v_star = con.sql((SQL_DIR / "weights_no_reference.sql").read_text(),
                             params={"rollout": rollout_files}).to_arrow_table()
        con.register("v_star", v_star)
        weights = con.sql((SQL_DIR / "weights.sql").read_text(),
                          params={"adv_clip": params.adv_clip, "format_penalty": params.format_penalty,
                                  "adv_norm": params.adv_norm, "skip_degenerate": params.skip_degenerate,
                                  "min_reward": params.min_reward,
                                  "rollout": rollout_files}).to_arrow_table()
    except duckdb.Error as e:  # a missing or corrupt episodes table: one line naming the inputs
        raise ValueError(f"weights over {[str(p) for p in reference + rollout]}: "
                         f"{str(e).splitlines()[0]}") from None
    finally:
        con.close()
    missing = sorted({g for g, v in zip(weights["goal_idx"].to_pylist(), weights["v_star"].to_pylist())
                      if v is None})
    if missing:
        raise ValueError(f"rollout goals {missing[:10]} have no reference samples (V* unknown); "
                         "run the reference stage on the run's training goals")
    return weights, v_star, _diagnostics(weights, v_star)


def _diagnostics(weights: pa.Table, v_star: pa.Table) -> pa.Table:
    # Flagged on the environment reward, not on V*: a format penalty moves V* away from 0 either way.
    rows = [{"check": "v_star_zero", "goal_idx": g, "value": v, "advice": V_STAR_ZERO_ADVICE}
            for g, v, best in zip(v_star["goal_idx"].to_pylist(), v_star["v_star"].to_pylist(),
                                  v_star["ref_max_reward"].to_pylist()) if best == 0.0]
    advantages = weights["advantage"].to_pylist()
    if advantages and max(advantages) < 0:
        rows.append({"check": "all_advantages_negative", "goal_idx": None, "value": max(advantages),
                     "advice": ALL_NEGATIVE_ADVICE})
    return pa.Table.from_pylist(rows, schema=DIAGNOSTICS_SCHEMA)


def weights_stage(reference_dir: Path | None, rollout_dir: Path, params: WeightsParams, *, run: str,
                  iteration: int, root=None, force: bool = False, cached_only: bool = False) -> Path:
    """Run (or reuse) the weights stage of one iteration; returns its folder. `force` recomputes it.
    `reference_dir` None: no reference pass (V* = 0)."""
    params.check()
    inputs = {"reference": Path(reference_dir).name if reference_dir else None, "rollout": Path(rollout_dir).name}
    key = stage_key(asdict(params), inputs, code_version("stages/weights.py", "stages/weights.sql",
                                                         "stages/weights_v_star.sql",
                                                         "stages/weights_no_reference.sql"))
    folder = stage_dir(run, "weights", key, iteration, root)
    if reuse_done(folder, "weights", force, cached_only):
        return folder
    reference = [Path(reference_dir) / "episodes.parquet"] if reference_dir else []
    weights, v_star, diagnostics = compute_weights(reference, [Path(rollout_dir) / "episodes.parquet"], params)
    for row in diagnostics.to_pylist():
        log.warning("weights diagnostic %s (goal %s, value %.3f): %s", row["check"], row["goal_idx"],
                    row["value"], row["advice"])
    summary = {"episodes": weights.num_rows, "goals": v_star.num_rows,
               "mean_weight": _mean(weights["weight"]), "mean_advantage": _mean(weights["advantage"]),
               "mean_v_star": _mean(v_star["v_star"]), "diagnostics": diagnostics.num_rows,
               "skipped_episodes": sum(w == 0.0 for w in weights["weight"].to_pylist())}
    manifest = {"stage": "weights", "run": run, "iteration": iteration, "key": key, "params": asdict(params),
                "inputs": inputs, "summary": summary}
    with stage_output(folder, manifest) as tmp:
        write_table(weights, tmp / "weights.parquet")
        write_table(v_star, tmp / "v_star.parquet")
        write_table(diagnostics, tmp / "diagnostics.parquet")
    log.info("weights: %d episodes, mean weight %.3f -> %s", weights.num_rows, summary["mean_weight"], folder)
    return folder


def _mean(column: pa.ChunkedArray) -> float | None:
    values = [v for v in column.to_pylist() if v is not None]
    return sum(values) / len(values) if values else None
