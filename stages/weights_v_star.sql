-- V*(goal) = beta * ln(mean(exp(r / beta))) over the goal's reference rewards (A*-PO stage 1), in the
-- log-sum-exp form m + beta * ln(mean(exp((r - m) / beta))) with m = max(r): every exponent is <= 0 and one
-- term is exactly 1, so nothing overflows and the log's argument is >= 1/n, even at beta = 0.01.
-- Limits: beta -> 0 gives max(r) (the best sample); beta -> inf gives mean(r) (a plain baseline).
-- r is the environment reward minus format_penalty per reply that held no action (0 by default).
-- The reference table covers a block of iterations' goals (A*-PO stage 1 runs once per block): only the goals
-- of this rollout are kept, so v_star and its diagnostics describe this iteration.
WITH ref AS (
    SELECT goal_idx, success, reward,
           reward - $format_penalty * format_errors AS r
    FROM read_parquet($reference)
    WHERE goal_idx IN (SELECT goal_idx FROM read_parquet($rollout))
),
shifted AS (
    SELECT *, max(r) OVER (PARTITION BY goal_idx) AS m FROM ref
)
SELECT goal_idx,
       count(*)::INTEGER AS n_ref,
       sum(success::INTEGER)::INTEGER AS ref_successes,
       avg(r) AS ref_mean,
       any_value(m) AS ref_max,
       max(reward) AS ref_max_reward,
       any_value(m) + $beta * ln(avg(exp((r - m) / $beta))) AS v_star
FROM shifted
GROUP BY goal_idx
ORDER BY goal_idx
