"""The hot-model replica scaler: growth under sustained concurrency, cooling, and
each growth's trial. Pure logic with a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from balancer.replicas import ReplicaScaler, ReplicaSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_replicas_grow_under_sustained_concurrency_only_and_shrink_when_cool() -> None:
    clock = Clock()
    scaler = ReplicaScaler(ReplicaSettings(max_replicas=3, grow_at=4, sustain=2, cooldown=5), clock)

    def run(model: str, inflight: int, seconds: float) -> None:
        scaler.inflight[model] = inflight
        for _ in range(int(seconds / 0.25)):
            clock.now += 0.25
            scaler.tick()

    run("burst", 40, 1.0)
    run("burst", 0, 1.0)
    assert scaler.replicas("burst") == 1, "one burst is not sustained load"
    run("hot", 20, 10)
    assert scaler.replicas("hot") == 3, "grows one at a time, up to the cap"
    run("hot", 3, 20)
    assert scaler.replicas("hot") == 2, "cooled below half of the next step down, for the cooldown"
    run("hot", 0, 60)
    assert scaler.replicas("hot") == 1
    assert scaler.counts == {}
    scaler.set_limits({"pinned": (2, 2), "small": (1, 1)})
    assert scaler.replicas("pinned") == 2
    run("small", 50, 10)
    assert scaler.replicas("small") == 1, "a model's own max"


def _trial_scaler(trial: bool = True) -> tuple[ReplicaScaler, Callable[..., None]]:
    clock = Clock()
    scaler = ReplicaScaler(ReplicaSettings(max_replicas=3, grow_at=4, sustain=2, cooldown=5, trial=trial), clock)

    def run(
        model: str,
        inflight: int,
        seconds: float,
        mean_time: Callable[[int], float],
        answers: Callable[[int], int] = lambda replicas: 10,
    ) -> None:
        """``inflight`` requests kept in flight, ``answers(replicas)`` answers a tick,
        each taking ``mean_time(replicas)`` seconds."""
        for _ in range(int(seconds / 0.25)):
            clock.now += 0.25
            for _ in range(answers(scaler.replicas(model))):
                scaler.begin(model)
                scaler.end(model, mean_time(scaler.replicas(model)))
            scaler.inflight[model] = inflight
            scaler.tick()

    return scaler, run


def test_a_replica_that_does_not_pay_goes_back_and_the_model_waits_before_trying_again() -> None:
    """Workers sharing cores: each replica makes the model's requests slower."""
    scaler, run = _trial_scaler()

    def slower(replicas: int) -> float:
        return 0.005 * (1 + 0.2 * (replicas - 1))

    run("m", 20, 2.5, slower)
    assert scaler.replicas("m") == 2, "sustained load grew a replica, on trial"
    run("m", 20, 1.5, slower)
    assert scaler.replicas("m") == 2, "the trial settles, then measures"
    run("m", 20, 3, slower)
    assert scaler.replicas("m") == 1, "slower than before: back to one"
    assert scaler.trials == {"kept": 0, "reverted": 1, "undecided": 0}
    run("m", 20, 4.5, slower)
    assert scaler.replicas("m") == 1, "no new trial within the back-off (the cooldown, 5 s)"
    run("m", 20, 3, slower)
    assert scaler.replicas("m") == 2, "after the back-off, a new trial"
    run("m", 20, 4.5, slower)
    assert scaler.replicas("m") == 1 and scaler.trials["reverted"] == 2
    run("m", 20, 9, slower)
    assert scaler.replicas("m") == 1, "the back-off doubled after a second failure in a row"
    run("m", 20, 3, slower)
    assert scaler.replicas("m") == 2


def test_a_replica_that_pays_stays_and_the_next_one_gets_its_own_trial() -> None:
    """Workers with cores of their own: each replica adds capacity."""
    scaler, run = _trial_scaler()

    def faster(replicas: int) -> float:
        return 0.008 / replicas

    run("m", 20, 13, faster)
    assert scaler.replicas("m") == 3, "each growth kept, up to the cap"
    assert scaler.trials == {"kept": 2, "reverted": 0, "undecided": 0}


def test_without_trials_a_replica_stays_however_it_does() -> None:
    scaler, run = _trial_scaler(trial=False)
    run("m", 20, 13, lambda replicas: 0.005 * replicas)
    assert scaler.replicas("m") == 3
    assert scaler.trials == {"kept": 0, "reverted": 0, "undecided": 0}


def test_past_capacity_a_replica_that_answers_more_stays_though_each_answer_still_takes_longer() -> None:
    """Arrivals beyond the owner's capacity (open loop): the queue keeps growing, so
    each request's time grows with or without the replica, but two workers answer
    twice as many a second."""
    scaler, run = _trial_scaler()
    queue = iter(range(1_000_000))

    def growing(replicas: int) -> float:
        return 0.01 + next(queue) * 1e-5

    run("m", 20, 13, growing, answers=lambda replicas: 10 * replicas)
    assert scaler.replicas("m") == 3 and scaler.trials == {"kept": 2, "reverted": 0, "undecided": 0}


def test_a_trial_ends_without_a_verdict_when_the_index_changes_the_count_and_a_revert_keeps_the_limits() -> None:
    scaler, run = _trial_scaler()

    def slower(replicas: int) -> float:
        return 0.005 * replicas

    run("m", 20, 2.5, slower)
    assert scaler.replicas("m") == 2
    scaler.set_limits({"m": (1, 1)})  # the model's config now says one replica at most
    run("m", 20, 4.5, slower)
    assert scaler.replicas("m") == 1 and scaler.trials == {"kept": 0, "reverted": 0, "undecided": 0}
    scaler.set_limits({"m": (2, 3)})  # at least two now: a failed trial of the third goes back to two
    run("m", 20, 2.5, slower)
    assert scaler.replicas("m") == 3
    run("m", 20, 4.5, slower)
    assert scaler.replicas("m") == 2 and scaler.trials["reverted"] == 1
