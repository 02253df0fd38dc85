-- Per-episode weights of one iteration's rollout, the seed's rule:
--   advantage = r - V*(goal); adv_norm = clip((adv - mean) / (std + 1e-6), -adv_clip, adv_clip) over the batch;
--   weight = clamp(adv_norm + 1, 0.1, 5.0).
-- std is the sample standard deviation (torch's default); with one episode in the group it is undefined and
-- adv_norm = adv - mean (= 0), as in the seed. `v_star` is the table computed by weights_v_star.sql.
-- $adv_norm = 'goal' normalises over each goal's episodes instead of the batch (a goal's samples are compared
-- with each other only). $skip_degenerate gives weight 0 to the episodes of a group whose advantages are all
-- equal (within 1e-9): none of them is better than the others, yet the seed's rule gives each weight 1.
-- $min_reward gives weight 0 to episodes whose environment reward is below it (1.0: only exact purchases are
-- imitated); it filters after normalisation, so the kept episodes' weights are the seed's.
WITH episodes AS (
    SELECT e.episode_id, e.goal_idx, e.sample_idx, e.reward, e.format_errors,
           e.reward - $format_penalty * e.format_errors AS r, v.v_star
    FROM read_parquet($rollout) AS e
    LEFT JOIN v_star AS v USING (goal_idx)
),
advantages AS (
    SELECT *, r - v_star AS advantage,
           CASE WHEN $adv_norm = 'goal' THEN goal_idx ELSE -1 END AS norm_group
    FROM episodes
),
normalised AS (
    SELECT *,
           CASE WHEN count(*) OVER g > 1
                THEN (advantage - avg(advantage) OVER g) / (stddev_samp(advantage) OVER g + 1e-6)
                ELSE advantage - avg(advantage) OVER g
           END AS adv_raw_norm,
           max(advantage) OVER g - min(advantage) OVER g <= 1e-9 AS degenerate
    FROM advantages
    WINDOW g AS (PARTITION BY norm_group)
),
clipped AS (
    SELECT *, greatest(-$adv_clip, least($adv_clip, adv_raw_norm)) AS adv_norm FROM normalised
)
SELECT episode_id, goal_idx, sample_idx, reward, r, v_star, advantage, adv_norm,
       CASE WHEN ($skip_degenerate AND degenerate) OR reward < $min_reward THEN 0.0
            ELSE greatest(0.1, least(5.0, adv_norm + 1.0)) END AS weight
FROM clipped
ORDER BY episode_id
