-- Per-episode weights of one iteration's rollout, the seed's rule:
--   advantage = r - V*(goal); adv_norm = clip((adv - mean) / (std + 1e-6), -adv_clip, adv_clip) over the batch;
--   weight = clamp(adv_norm + 1, 0.1, 5.0).
-- std is the sample standard deviation (torch's default); with one episode in the batch it is undefined and
-- adv_norm = adv - mean (= 0), as in the seed. `v_star` is the table computed by weights_v_star.sql.
WITH episodes AS (
    SELECT e.episode_id, e.goal_idx, e.sample_idx, e.reward, e.format_errors,
           e.reward - $format_penalty * e.format_errors AS r, v.v_star
    FROM read_parquet($rollout) AS e
    LEFT JOIN v_star AS v USING (goal_idx)
),
advantages AS (
    SELECT *, r - v_star AS advantage FROM episodes
),
normalised AS (
    SELECT *,
           CASE WHEN count(*) OVER () > 1
                THEN (advantage - avg(advantage) OVER ()) / (stddev_samp(advantage) OVER () + 1e-6)
                ELSE advantage - avg(advantage) OVER ()
           END AS adv_raw_norm
    FROM advantages
)
SELECT episode_id, goal_idx, sample_idx, reward, r, v_star, advantage,
       greatest(-$adv_clip, least($adv_clip, adv_raw_norm)) AS adv_norm,
       greatest(0.1, least(5.0, greatest(-$adv_clip, least($adv_clip, adv_raw_norm)) + 1.0)) AS weight
FROM normalised
ORDER BY episode_id
