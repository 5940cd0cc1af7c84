"""The fair queue and the ETA estimator, without a worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.errors import QueueFull, TooManyJobs
from generation.eta import EtaEstimator, job_cost, start_times
from generation.jobs import JobRequest
from generation.options import AnimateOptions
from generation.queue import FairQueue, QueueClosed

OPTIONS = AnimateOptions()


def request(job_id: str, user_id: int) -> JobRequest:
    return JobRequest(job_id, user_id, OPTIONS, Path(f"/data/inputs/{job_id}.png"), 10_000_000)


def drain(queue: FairQueue) -> list[str]:
    served = []
    while (job := queue.take_nowait()) is not None:
        served.append(job.job_id)
        queue.finish(job.job_id)
    return served


def test_one_member_with_five_requests_cannot_starve_the_others() -> None:
    queue = FairQueue(max_per_user=10)
    for i in range(1, 6):
        queue.push(request(f"A{i}", 1))
    queue.push(request("B1", 2))
    queue.push(request("C1", 3))

    assert [j.job_id for j in queue.waiting()] == ["A1", "B1", "C1", "A2", "A3", "A4", "A5"]
    assert drain(queue) == ["A1", "B1", "C1", "A2", "A3", "A4", "A5"]


def test_round_robin_with_several_members_keeps_each_members_order() -> None:
    queue = FairQueue(max_per_user=10)
    for job_id, user in [("A1", 1), ("A2", 1), ("B1", 2), ("A3", 1), ("B2", 2), ("C1", 3)]:
        queue.push(request(job_id, user))

    assert drain(queue) == ["A1", "B1", "C1", "A2", "B2", "A3"]


def test_a_member_whose_job_just_started_goes_to_the_back() -> None:
    queue = FairQueue(max_per_user=10)
    queue.push(request("A1", 1))
    assert queue.take_nowait().job_id == "A1"  # type: ignore[union-attr]
    # A's next request arrives first, but B has not had a turn yet.
    queue.push(request("A2", 1))
    queue.push(request("B1", 2))

    assert [j.job_id for j in queue.waiting()] == ["B1", "A2"]
    assert queue.position("B1") == 1
    assert queue.position("A2") == 2
    assert queue.position("A1") == 0  # running
    assert queue.position("nope") is None


def test_after_a_busy_spell_the_member_served_last_waits_behind_the_others() -> None:
    queue = FairQueue(max_per_user=10)
    queue.push(request("A1", 1))
    queue.push(request("B1", 2))
    queue.push(request("B2", 2))
    queue.push(request("B3", 2))
    assert drain(queue) == ["A1", "B1", "B2", "B3"]
    # B just had the turn; A (served long ago) and C (new) are equals, in arrival order.
    queue.push(request("B4", 2))
    queue.push(request("A2", 1))
    queue.push(request("C1", 3))
    assert drain(queue) == ["A2", "C1", "B4"]


def test_a_turn_had_long_before_a_quiet_spell_is_forgotten() -> None:
    now = [0.0]
    queue = FairQueue(max_per_user=10, clock=lambda: now[0])
    queue.push(request("A1", 1))
    assert drain(queue) == ["A1"]  # one clip on an idle bot
    now[0] += 3600  # an hour later, a busy spell begins
    queue.push(request("B1", 2))
    queue.take_nowait()
    queue.push(request("A2", 1))
    queue.push(request("C1", 3))
    queue.push(request("D1", 4))
    assert [job.job_id for job in queue.waiting()] == ["A2", "C1", "D1"]  # in arrival order


def test_a_job_that_could_not_be_started_gets_its_place_back() -> None:
    queue = FairQueue()
    for job_id, user in (("a1", 1), ("b1", 2), ("a2", 1)):
        queue.push(request(job_id, user))
    taken = queue.take_nowait()
    assert taken is not None and taken.job_id == "a1"
    queue.give_back("a1")  # the backend was unreachable
    assert queue.position("a1") == 1 and queue.active_count(1) == 2
    assert drain(queue) == ["a1", "b1", "a2"]


def test_cancelling_a_waiting_job_gives_the_member_their_turn_back() -> None:
    queue = FairQueue(max_per_user=10)
    queue.push(request("A1", 1))
    queue.push(request("B1", 2))
    queue.push(request("A2", 1))
    assert queue.take_nowait().job_id == "A1"  # type: ignore[union-attr]
    assert queue.remove("A2") is not None
    assert queue.remove("A2") is None
    queue.push(request("C1", 3))
    queue.push(request("A3", 1))

    assert [j.job_id for j in queue.waiting()] == ["B1", "C1", "A3"]


def test_per_member_cap_counts_waiting_and_running_jobs() -> None:
    queue = FairQueue(max_per_user=2)
    queue.push(request("A1", 1))
    queue.push(request("A2", 1))
    with pytest.raises(TooManyJobs) as refused:
        queue.push(request("A3", 1))
    assert refused.value.limit == 2
    assert "nothing was charged" in refused.value.user_message
    assert len(queue) == 2  # the refused one left no trace

    queue.take_nowait()  # A1 runs: still counts
    with pytest.raises(TooManyJobs):
        queue.push(request("A3", 1))
    queue.finish("A1")
    queue.push(request("A3", 1))
    assert queue.active_count(1) == 2
    # Other members are not affected.
    queue.push(request("B1", 2))


def test_total_waiting_cap() -> None:
    queue = FairQueue(max_per_user=1, max_waiting=50)
    for user in range(50):
        queue.push(request(f"J{user}", user))
    with pytest.raises(QueueFull) as refused:
        queue.push(request("J50", 50))
    assert (refused.value.waiting, refused.value.limit) == (50, 50)
    # A running job no longer waits: there is room again.
    queue.take_nowait()
    queue.push(request("J50", 50))


def test_forced_push_bypasses_caps_for_jobs_resumed_after_a_restart() -> None:
    queue = FairQueue(max_per_user=1, max_waiting=1)
    queue.push(request("A1", 1))
    queue.push(request("A2", 1), force=True)
    queue.push(request("B1", 2), force=True)
    assert [j.job_id for j in queue.waiting()] == ["A1", "B1", "A2"]


def test_duplicate_job_id_is_refused() -> None:
    queue = FairQueue()
    queue.push(request("A1", 1))
    with pytest.raises(ValueError):
        queue.push(request("A1", 1))


def test_positions_follow_the_queue_as_it_moves() -> None:
    queue = FairQueue(max_per_user=10)
    for job_id, user in [("A1", 1), ("A2", 1), ("B1", 2), ("C1", 3)]:
        queue.push(request(job_id, user))
    assert {j: queue.position(j) for j in ["A1", "B1", "C1", "A2"]} == {
        "A1": 1,
        "B1": 2,
        "C1": 3,
        "A2": 4,
    }
    queue.take_nowait()
    assert [queue.position(j) for j in ["A1", "B1", "C1", "A2"]] == [0, 1, 2, 3]
    queue.remove("B1")
    assert [queue.position(j) for j in ["C1", "A2"]] == [1, 2]


async def test_get_waits_for_a_job_and_close_wakes_it() -> None:
    queue = FairQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.push(request("A1", 1))
    job = await asyncio.wait_for(getter, 1)
    assert job.job_id == "A1"

    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, 1)
    with pytest.raises(QueueClosed):
        queue.push(request("B1", 2))


@given(st.lists(st.integers(min_value=0, max_value=4), max_size=40))
def test_fair_order_for_any_arrival_order(users: list[int]) -> None:
    """All requests present at once: every member is served once per round, each in their own
    arrival order."""
    queue = FairQueue(max_per_user=100, max_waiting=100)
    for seq, user in enumerate(users):
        queue.push(request(f"u{user}-{seq}", user))
    served = drain(queue)

    owner = [int(job_id[1 : job_id.index("-")]) for job_id in served]
    for user in set(users):
        mine = [job_id for job_id, o in zip(served, owner, strict=True) if o == user]
        assert mine == [f"u{user}-{seq}" for seq, u in enumerate(users) if u == user]
    # In every prefix, two members still having work were served within one job of each other.
    counts = dict.fromkeys(set(users), 0)
    totals = {u: users.count(u) for u in set(users)}
    for o in owner:
        counts[o] += 1
        busy = [counts[u] for u in counts if counts[u] < totals[u]]
        if busy:
            assert max(busy) - min(busy) <= 1


def test_eta_uses_the_median_seconds_per_unit() -> None:
    eta = EtaEstimator(default_seconds_per_unit=0.5)
    assert not eta.has_history
    assert eta.estimate(100) == 50.0  # the guess before any history
    eta.seed([(100, 10.0), (100, 20.0)])
    eta.record_duration(200, 400.0)  # one slow clip (a model switch) hardly matters
    assert eta.seconds_per_unit() == pytest.approx(0.2)
    assert eta.estimate(350) == pytest.approx(70.0)


def test_eta_keeps_a_recent_window() -> None:
    eta = EtaEstimator(window=3)
    for seconds in [100.0, 100.0, 100.0, 1.0, 1.0]:
        eta.record_duration(10, seconds)
    assert eta.seconds_per_unit() == pytest.approx(0.1)


def test_job_cost_is_frames_times_steps() -> None:
    assert job_cost(AnimateOptions(num_inference_steps=25), frames=25) == 625
    assert job_cost(AnimateOptions(num_inference_steps=10, num_frames=14), frames=25) == 140


def test_a_draft_costs_its_whole_steps_and_a_share_of_the_reused_ones() -> None:
    # 25 steps at interval 3: 9 whole, 16 on the kept feature at 0.42 of a whole one.
    draft = AnimateOptions(num_inference_steps=25, cache_interval=3)
    assert job_cost(draft, frames=25) == round(25 * (9 + 16 * 0.42)) == 393
    # So a queue of drafts is estimated to clear faster than the same clips at best quality.
    eta = EtaEstimator(default_seconds_per_unit=0.02)
    assert eta.estimate(job_cost(draft, 25)) < eta.estimate(job_cost(AnimateOptions(), 25))


def test_cancelling_and_resubmitting_does_not_win_an_extra_turn() -> None:
    queue = FairQueue(max_per_user=5)
    for job_id, user in (("a1", 1), ("b1", 2), ("b2", 2)):
        queue.push(request(job_id, user))
    for expected in ("a1", "b1"):
        taken = queue.take_nowait()
        assert taken is not None and taken.job_id == expected
        queue.finish(expected)
    # A has had this round's turn; B's second clip waits for the next round.
    queue.push(request("a2", 1))
    assert queue.remove("a2") is not None
    queue.push(request("a3", 1))
    assert drain(queue) == ["b2", "a3"]


def test_a_waiting_clip_starts_when_the_first_gpu_frees() -> None:
    # One GPU is 10 s from done, the other 100 s: the next clip starts in 10 s, not the 55 s
    # of an average, and the one after it on the same GPU once that is done (40 s).
    assert start_times([100.0, 10.0], [30.0, 30.0, 30.0], gpus=2) == [10.0, 40.0, 70.0]
    # One GPU: each waits for everything ahead of it.
    assert start_times([10.0], [30.0, 20.0], gpus=1) == [10.0, 40.0]
    # A GPU free now (it is loading, say) takes the first at once.
    assert start_times([50.0], [30.0, 30.0], gpus=2) == [0.0, 30.0]
    # More running than GPUs (a worker just left): the clip it held waits its turn too.
    assert start_times([20.0, 20.0], [30.0], gpus=1) == [40.0]
