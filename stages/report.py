"""What a person looks at after an iteration: its metrics as one table row, three of its episodes as markdown,
and the learning curve as a PNG. Plain functions over the stage folders; `flows/apo.py` publishes them as
Prefect artifacts and `bench/learning.py` draws the benchmark's curves with the same `plot_curves`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb

from storage.files import written_atomically

log = logging.getLogger(__name__)
OBSERVATION_CHARS = 400  # an observation is shortened to this in the markdown (results pages run to 2,000)


def _manifest_summary(folder: str | None) -> dict:
    path = Path(folder) / "manifest.json" if folder else None
    return json.loads(path.read_text()).get("summary", {}) if path and path.is_file() else {}


def eval_row(folder: str | None) -> dict | None:
    """The eval table's one row (score, score_ci, success_rate, success_ci, ...) of an eval folder; a damaged
    table is a ValueError naming it."""
    if not folder:
        return None
    path = Path(folder) / "eval.parquet"
    con = duckdb.connect()
    try:
        table = con.sql("SELECT * FROM read_parquet($p)", params={"p": str(path)})
        row = table.fetchall()[0]
        return dict(zip(table.columns, row))
    except (duckdb.Error, IndexError) as e:
        raise ValueError(f"{path}: not a readable eval table ({str(e).splitlines()[0] or 'no row'})") from None
    finally:
        con.close()


def reported_eval_row(folder: str | None) -> dict | None:
    """`eval_row` for what reports a run (artifacts, curves): a damaged table is left out with a warning naming
    it, because the iterations it reports are done and recorded, and a report must not fail them."""
    try:
        return eval_row(folder)
    except ValueError as e:
        log.warning("left out of the report: %s", e)
        return None


def iteration_metrics(record: dict) -> dict:
    """One row of numbers for an iteration record: rewards, training loss parts, speed, stage seconds, eval."""
    ref, ro, tr = (_manifest_summary(record.get(k)) for k in ("reference", "rollout", "train"))
    ev = reported_eval_row(record.get("eval"))
    row = {"iteration": record["iteration"],
           "reference_mean_reward": ref.get("mean_reward"), "rollout_mean_reward": ro.get("mean_reward"),
           "rollout_seconds": ro.get("seconds"), "loss": tr.get("loss"), "ce": tr.get("ce"), "kl": tr.get("kl"),
           "apo_residual": tr.get("apo_residual"), "mean_weight": tr.get("mean_weight"),
           "train_tokens_per_s": tr.get("tokens_per_s"), "train_seconds": tr.get("seconds"),
           "peak_mem_mb": tr.get("peak_mem_mb")}
    if ev:
        row |= {"eval_n": ev["n"], "eval_score": ev["score"], "eval_score_ci": ev["score_ci"],
                "eval_success": ev["success_rate"], "eval_success_ci": ev["success_ci"]}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def sample_episodes_markdown(folder: str, n: int = 3) -> str:
    """`n` episodes of a rollout-like folder (best, median and worst reward), turn by turn."""
    con = duckdb.connect()
    try:
        episodes = con.sql("SELECT episode_id, goal_idx, reward, end_reason FROM read_parquet($p) "
                           "ORDER BY reward DESC, episode_id", params={"p": str(Path(folder) / "episodes.parquet")}
                           ).fetchall()
        picks = sorted({0, len(episodes) // 2, len(episodes) - 1})[:n] if episodes else []
        parts = [f"### {len(picks)} of {len(episodes)} episodes in `{folder}`"]
        for i in picks:
            episode_id, goal_idx, reward, end_reason = episodes[i]
            turns = con.sql("SELECT turn, page, observation, completion_text, action, valid FROM read_parquet($p) "
                            "WHERE episode_id = $e ORDER BY turn",
                            params={"p": str(Path(folder) / "turns.parquet"), "e": episode_id}).fetchall()
            parts.append(f"\n**{episode_id}** (goal {goal_idx}): reward **{reward:.3f}**, ended by {end_reason}\n")
            parts.append("| turn | page | observation | reply | action | valid |\n|---|---|---|---|---|---|")
            for turn, page, observation, reply, action, valid in turns:
                shown = observation if len(observation) <= OBSERVATION_CHARS else \
                    observation[:OBSERVATION_CHARS] + " ..."
                parts.append(f"| {turn} | {page} | {_cell(shown)} | {_cell(reply)} | `{_cell(action) or '-'}` | "
                             f"{'yes' if valid else 'no'} |")
        return "\n".join(parts)
    finally:
        con.close()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _wilson_bars(rows: list[dict]) -> list[list[float]]:
    """Asymmetric error bars (in %) of the Wilson interval, which is centred on success_centre, not the rate."""
    lower = [100 * (r["success_rate"] - (r["success_centre"] - r["success_ci"])) for r in rows]
    upper = [100 * (r["success_centre"] + r["success_ci"] - r["success_rate"]) for r in rows]
    return [lower, upper]


def plot_curves(curves: dict[str, list[dict]], out: Path, baselines: dict[str, dict] | None = None,
                title: str = "Held-out test goals (greedy)") -> Path:
    """Score and success rate against iteration, with 95% CIs: one line per curve (rows of the eval table,
    with `iteration`), one dashed line per baseline (the same columns)."""
    import matplotlib
    matplotlib.use("Agg")  # no display; also keeps Prefect workers headless
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, rows) in enumerate(curves.items()):
        rows = sorted(rows, key=lambda r: r["iteration"])
        dodge = 0.06 * (k - (len(curves) - 1) / 2)  # curves that share a point keep their error bars visible
        x = [r["iteration"] + dodge for r in rows]
        axes[0].errorbar(x, [r["score"] for r in rows], yerr=[r["score_ci"] for r in rows], marker="o",
                         capsize=3, label=label)
        axes[1].errorbar(x, [100 * r["success_rate"] for r in rows], yerr=_wilson_bars(rows), marker="o",
                         capsize=3, label=label)
    for i, (label, b) in enumerate((baselines or {}).items()):
        for ax, value in ((axes[0], b["score"]), (axes[1], 100 * b["success_rate"])):
            ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=label)
    for ax, name in zip(axes, ("score (100 x mean reward)", "success rate (%)")):
        ax.set_xlabel("iteration (0 = starting policy)")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with written_atomically(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out)
