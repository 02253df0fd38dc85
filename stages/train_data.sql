-- Training rows: one per model reply of a weighted episode, with what the losses need from the episode.
-- episode_tokens normalises the per-episode cross-entropy (a mean over the episode's action tokens) and
-- apo_target = r - V*, the regression target of the A*-PO objective.
-- noop marks a reply that changed nothing (`--skip-noop-turns` imitates none of them): an invalid action (the
-- page stays as it was), or a click on the item page that repeats a valid click of the same visit to it, i.e.
-- an option already selected. A visit is a run of consecutive item-page turns (item_visit counts the episode's
-- other turns so far). A value that another of its group displaced in between counts as selected too: the
-- turns table does not name option groups, and a successful episode that clicks A, B, A wasted the pair anyway.
WITH turns AS (
    SELECT *, sum((page <> 'item')::INT) OVER (PARTITION BY episode_id ORDER BY turn) AS item_visit
    FROM read_parquet($turns)
),
flagged AS (
    SELECT *,
           coalesce(NOT valid, false)
           OR (page = 'item' AND coalesce(sum(valid::INT) OVER (
                   PARTITION BY episode_id, item_visit, action ORDER BY turn
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) > 0) AS noop
    FROM turns
)
SELECT t.episode_id, t.turn, t.prompt_ids, t.completion_ids, t.noop,
       w.weight, w.advantage AS apo_target,
       (sum(len(t.completion_ids)) OVER (PARTITION BY t.episode_id))::BIGINT AS episode_tokens
FROM flagged AS t
JOIN read_parquet($weights) AS w USING (episode_id)
WHERE len(t.completion_ids) > 0
ORDER BY t.episode_id, t.turn
