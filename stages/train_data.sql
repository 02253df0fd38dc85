-- Training rows: one per model reply of a weighted episode, with what the losses need from the episode.
-- episode_tokens normalises the per-episode cross-entropy (a mean over the episode's action tokens) and
-- apo_target = r - V*, the regression target of the A*-PO objective.
SELECT t.episode_id, t.turn, t.prompt_ids, t.completion_ids,
       w.weight, w.advantage AS apo_target,
       (sum(len(t.completion_ids)) OVER (PARTITION BY t.episode_id))::BIGINT AS episode_tokens
FROM read_parquet($turns) AS t
JOIN read_parquet($weights) AS w USING (episode_id)
WHERE len(t.completion_ids) > 0
ORDER BY t.episode_id, t.turn
