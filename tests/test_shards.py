"""How a sampling stage is cut into shards (stages/shards.py); merging them is tested through the pipeline
(tests/test_pipeline.py) and on two Prefect workers (tests/test_remote.py)."""
from __future__ import annotations

import pytest

from stages.rollout import episode_requests
from stages.shards import split_requests


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 9])
def test_shards_cut_the_goals_in_request_order_into_near_equal_groups(shards):
    goals = [41, 7, 300, 12, 5]
    requests = episode_requests(goals, [2, 1, 3, 1, 2])
    parts = split_requests(requests, shards)
    assert len(parts) == min(shards, len(goals))
    assert [r for part in parts for r in part] == requests  # concatenated: the unsharded order
    sizes = [len({g for g, _ in part}) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    owners = [{g for g, _ in part} for part in parts]
    assert sum(len(o) for o in owners) == len(goals)  # every sample of a goal in one shard


def test_shards_below_one_are_refused():
    with pytest.raises(ValueError, match=r"^--shards must be >= 1, got 0$"):
        split_requests(episode_requests([1, 2], 1), 0)
