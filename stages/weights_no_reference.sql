-- V* without reference samples (--v-star-samples 0): 0 for every goal of the rollout, the same columns as
-- weights_v_star.sql. Only allowed where V* cancels (weighted-sft with advantages normalised per goal, checked by
-- stages/config.py), so the weights equal those of any V*; the ref_* columns are NULL: nothing was sampled.
SELECT DISTINCT goal_idx,
       0::INTEGER AS n_ref,
       0::INTEGER AS ref_successes,
       NULL::DOUBLE AS ref_mean,
       NULL::DOUBLE AS ref_max,
       NULL::DOUBLE AS ref_max_reward,
       0.0::DOUBLE AS v_star
FROM read_parquet($rollout)
ORDER BY goal_idx
