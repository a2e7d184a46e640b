"""Canary bench: how often the live canary's verdict (server/models/canary.py) is wrong, and how many votes it needs,
when it is asked after every single vote; against a fixed-horizon z-test asked just as often, in the same run.

Seeded simulations, each of `--runs` independent canaries. Every run has its own users: each is sticky to the
candidate with probability `--share`, votes as often as a log-normal activity says and gives a thumbs-up with
their own probability (the arm's up-rate ± up to 0.2, uniformly), plus the candidate's effect. Scenarios:
  * A/A: both arms 0.6. A rollback is a false rollback (promotion is right: not worse within the margin).
  * worse by the margin: the candidate 0.6 - margin, the hardest case for "not worse"; a promotion is false.
  * +5 / -5 points: how many votes (both arms together) until a verdict, and how often it is the right one.
  * heavy voter: one extra user on the candidate casting `--heavy-share` of all votes with up-rate 0.1, on an
    A/A stream (must not roll back) and on a candidate 5 points better (must still be promoted); with the
    per-user cap, without it, and the z-test.
  * guardrail trips: A/A on 2% trip rate over requests, every request from a user as above.
The mSPRT lines run the product's own tallies and tests elementwise over all runs; a few runs are replayed through
`decide()` event by event to check both paths agree. Prints one line per figure, e.g.
`rate false_rollback_aa[msprt] 0.012`. Run: `.venv/bin/python bench/canary.py` (about a minute per 1000 runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.models.canary import (
    ArmStats,
    CanaryAction,
    CanaryPolicy,
    WeightedTally,
    decide,
    judge_rate_increase,
    judge_votes,
    weighted_terms,
)

Mask = npt.NDArray[np.bool_]
Counts = npt.NDArray[np.int64]
ROLLBACK, PROMOTE = 1, 2
UNCAPPED = 10**9


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: float  # the active arm's mean rate (thumbs-up, or trips)
    effect: float = 0.0  # added to every candidate user's rate
    spread: float = 0.2  # users' rates spread uniformly this far either side of the mean
    heavy_share: float = 0.0  # share of all events from one extra user on the candidate arm
    heavy_rate: float = 0.1


class Tallies:
    """The six weighted sums of server.models.canary.WeightedTally for both arms of every run, kept up to date
    one event at a time."""

    def __init__(self, runs: int, cap: int) -> None:
        self.cap = cap
        self.sums = np.zeros((6, runs, 2))

    def add(self, rows: Counts, arm: Counts, before: tuple[Counts, Counts], after: tuple[Counts, Counts]) -> None:
        self.sums[:, rows, arm] += weighted_terms(*after, self.cap) - weighted_terms(*before, self.cap)

    def arm(self, index: int) -> WeightedTally:
        return WeightedTally(*self.sums[:, :, index])


@dataclass
class State:
    """What the judges see after each event."""

    capped: Tallies
    uncapped: Tallies
    raw: npt.NDArray[np.float64]  # (2: trials, hits; runs; 2 arms) without any weighting, for the z-test


Judge = Callable[[State], tuple[Mask, Mask]]  # (roll back, promote) per run


@dataclass
class Outcome:
    step: npt.NDArray[np.int64]  # events (both arms) seen when it first decided; 0 when it never did
    action: npt.NDArray[np.int8]  # ROLLBACK, PROMOTE or 0


@dataclass
class Replay:
    users: npt.NDArray[np.int64]  # (events, runs replayed)
    arms: npt.NDArray[np.int8]
    hits: npt.NDArray[np.bool_]


def simulate(
    scenario: Scenario,
    judges: dict[str, Judge],
    *,
    runs: int,
    users: int,
    horizon: int,
    share: float,
    cap: int,
    seed: int,
    replayed_runs: int = 0,
) -> tuple[dict[str, Outcome], Replay]:
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, (runs, users))
    rates = scenario.rate + rng.uniform(-scenario.spread, scenario.spread, (runs, users))
    on_candidate = rng.random((runs, users)) < share
    if scenario.heavy_share:
        heavy = scenario.heavy_share / (1 - scenario.heavy_share) * activity.sum(axis=1, keepdims=True)
        activity = np.hstack([activity, heavy])
        rates = np.hstack([rates, np.full((runs, 1), scenario.heavy_rate - scenario.effect)])
        on_candidate = np.hstack([on_candidate, np.ones((runs, 1), dtype=bool)])
    rates = np.clip(rates + scenario.effect * on_candidate, 0.0, 1.0).ravel()
    on_candidate = on_candidate.ravel()
    columns = activity.shape[1]
    cumulative = np.cumsum(activity / activity.sum(axis=1, keepdims=True), axis=1)
    cumulative[:, -1] = 1.0
    # One sorted array for all runs (run r's cumulative shares shifted by r): one searchsorted picks every run's user.
    shifted = (cumulative + np.arange(runs)[:, None]).ravel()

    trials = np.zeros(runs * columns, dtype=np.int64)
    hits = np.zeros(runs * columns, dtype=np.int64)
    rows = np.arange(runs)
    state = State(Tallies(runs, cap), Tallies(runs, UNCAPPED), np.zeros((2, runs, 2)))
    outcomes = {name: Outcome(np.zeros(runs, dtype=np.int64), np.zeros(runs, dtype=np.int8)) for name in judges}
    replay = Replay(
        np.zeros((horizon, replayed_runs), dtype=np.int64),
        np.zeros((horizon, replayed_runs), dtype=np.int8),
        np.zeros((horizon, replayed_runs), dtype=bool),
    )
    for step in range(horizon):
        cell = np.searchsorted(shifted, rng.random(runs) + rows, side="right")
        arm = on_candidate[cell].astype(np.int64)
        hit = rng.random(runs) < rates[cell]
        before = (trials[cell], hits[cell])
        trials[cell] += 1
        hits[cell] += hit
        after = (trials[cell], hits[cell])
        state.capped.add(rows, arm, before, after)
        state.uncapped.add(rows, arm, before, after)
        state.raw[0, rows, arm] += 1
        state.raw[1, rows, arm] += hit
        replay.users[step] = cell[:replayed_runs] - rows[:replayed_runs] * columns
        replay.arms[step] = arm[:replayed_runs]
        replay.hits[step] = hit[:replayed_runs]

        undecided = False
        for name, judge in judges.items():
            outcome = outcomes[name]
            rollback, promote = judge(state)
            new = (outcome.action == 0) & (rollback | promote)
            outcome.step[new] = step + 1
            outcome.action[new] = np.where(rollback, ROLLBACK, PROMOTE)[new]
            undecided = undecided or bool((outcome.action == 0).any())
        if not undecided:
            break
    return outcomes, replay


def msprt_votes(policy: CanaryPolicy, *, capped: bool = True) -> Judge:
    def judge(state: State) -> tuple[Mask, Mask]:
        tallies = state.capped if capped else state.uncapped
        evidence = judge_votes(tallies.arm(0), tallies.arm(1), policy)
        return evidence.worse, evidence.not_worse & ~evidence.worse

    return judge


def z_test_votes(policy: CanaryPolicy) -> Judge:
    """The textbook fixed-horizon tests, one-sided at the same alphas, asked after every vote once each arm has the
    minimum votes: pooled two-proportion z for "worse", Wald z against -margin for "not worse"."""
    rollback_z, promote_z = norm.isf(policy.alpha_rollback), norm.isf(policy.alpha_promote)

    def judge(state: State) -> tuple[Mask, Mask]:
        trials, hits = state.raw
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = hits / trials
            difference = rate[:, 1] - rate[:, 0]
            pooled = hits.sum(axis=1) / trials.sum(axis=1)
            pooled_se = np.sqrt(pooled * (1 - pooled) * (1 / trials[:, 0] + 1 / trials[:, 1]))
            wald_se = np.sqrt((rate * (1 - rate) / trials).sum(axis=1))
            enough = trials.min(axis=1) >= policy.min_votes_per_arm
            worse = enough & (difference / pooled_se < -rollback_z)
            not_worse = enough & ((difference + policy.margin) / wald_se > promote_z)
        return worse, not_worse & ~worse

    return judge


def msprt_trips(policy: CanaryPolicy) -> Judge:
    def judge(state: State) -> tuple[Mask, Mask]:
        _, higher = judge_rate_increase(state.capped.arm(0), state.capped.arm(1), policy.trip_rate_tolerance, policy)
        return higher, np.zeros_like(higher)

    return judge


def z_test_trips(policy: CanaryPolicy) -> Judge:
    critical = norm.isf(policy.alpha_guardrail)

    def judge(state: State) -> tuple[Mask, Mask]:
        trials, hits = state.raw
        with np.errstate(divide="ignore", invalid="ignore"):
            difference = hits[:, 1] / trials[:, 1] - hits[:, 0] / trials[:, 0]
            pooled = hits.sum(axis=1) / trials.sum(axis=1)
            se = np.sqrt(pooled * (1 - pooled) * (1 / trials[:, 0] + 1 / trials[:, 1]))
            higher = (trials.min(axis=1) >= policy.min_requests_per_arm) & (difference / se > critical)
        return higher, np.zeros_like(higher)

    return judge


def rate(outcome: Outcome, action: int) -> float:
    return float(np.mean(outcome.action == action))


def replay_agrees(replay: Replay, outcome: Outcome, policy: CanaryPolicy) -> tuple[int, int]:
    """Feed the recorded votes of the replayed runs to decide() and check it gives the vectorised verdict at the
    vote the bench recorded, and `continue` one vote earlier. Returns (agreeing runs, runs checked)."""
    expected = {ROLLBACK: CanaryAction.ROLLBACK, PROMOTE: CanaryAction.PROMOTE}
    agreeing = checked = 0
    for run in range(replay.users.shape[1]):
        step = int(outcome.step[run])
        if not step:
            continue
        checked += 1
        verdicts = []
        for seen in (step - 1, step):
            recorded = zip(replay.users[:seen, run], replay.hits[:seen, run], replay.arms[:seen, run], strict=True)
            events: list[list[tuple[int, bool]]] = [[], []]
            for user, hit, arm in recorded:
                events[arm].append((int(user), bool(hit)))
            arms = [ArmStats.from_events(votes, [(user, False, False) for user, _ in votes]) for votes in events]
            verdicts.append(decide(*arms, policy).action)
        agreeing += verdicts == [CanaryAction.CONTINUE, expected[int(outcome.action[run])]]
    return agreeing, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=1000, help="users per run (on both arms together)")
    parser.add_argument("--share", type=float, default=0.5, help="the candidate's share of users")
    parser.add_argument("--horizon", type=int, default=5000, help="votes per A/A, worse-by-margin and heavy run")
    parser.add_argument("--ab-horizon", type=int, default=20000, help="votes per +5/-5 point run")
    parser.add_argument("--heavy-share", type=float, default=0.1)
    parser.add_argument("--replayed-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    policy = CanaryPolicy()
    started = time.monotonic()
    common = {"runs": args.runs, "users": args.users, "share": args.share, "cap": policy.max_votes_per_user}
    print(
        f"# {args.runs} runs per scenario, {args.users} users per run, candidate share {args.share}, "
        f"votes checked after each one; {policy}"
    )

    votes_judges = {"msprt": msprt_votes(policy), "z_test_peeking": z_test_votes(policy)}
    aa, _ = simulate(Scenario("aa", 0.6), votes_judges, horizon=args.horizon, seed=args.seed, **common)
    for name, outcome in aa.items():
        print(f"rate false_rollback_aa[{name}] {rate(outcome, ROLLBACK):.4f}")
    ratio = rate(aa["msprt"], ROLLBACK) / max(rate(aa["z_test_peeking"], ROLLBACK), 1 / args.runs)
    print(f"ratio false_rollback_aa_msprt_vs_z_test_peeking {ratio:.3f}")
    print(f"rate promoted_aa_by_{args.horizon}_votes[msprt] {rate(aa['msprt'], PROMOTE):.4f}")

    worse = Scenario("worse_by_margin", 0.6, effect=-policy.margin)
    by_margin, _ = simulate(worse, votes_judges, horizon=args.horizon, seed=args.seed + 1, **common)
    for name, outcome in by_margin.items():
        print(f"rate false_promotion_worse_by_margin[{name}] {rate(outcome, PROMOTE):.4f}")

    agreeing = checked = 0
    for label, effect, right, seed in (
        ("+5pt", 0.05, PROMOTE, args.seed + 2),
        ("-5pt", -0.05, ROLLBACK, args.seed + 3),
    ):
        outcomes, replay = simulate(
            Scenario(label, 0.6, effect=effect),
            {"msprt": msprt_votes(policy)},
            horizon=args.ab_horizon,
            seed=seed,
            replayed_runs=args.replayed_runs,
            **common,
        )
        outcome = outcomes["msprt"]
        steps = np.where(outcome.action > 0, outcome.step, np.inf)
        for quantile in (50, 90):
            value = np.quantile(steps, quantile / 100, method="inverted_cdf")
            shown = f"{value:.0f}" if np.isfinite(value) else f">{args.ab_horizon}"
            print(f"votes_to_decision_p{quantile}[{label}] {shown}")
        print(f"rate right_decision[{label}] {rate(outcome, right):.4f}")
        print(f"rate wrong_decision[{label}] {rate(outcome, PROMOTE + ROLLBACK - right):.4f}")
        print(f"rate undecided_after_{args.ab_horizon}_votes[{label}] {rate(outcome, 0):.4f}")
        runs_agreeing, runs_checked = replay_agrees(replay, outcome, policy)
        agreeing, checked = agreeing + runs_agreeing, checked + runs_checked

    heavy_judges = {**votes_judges, "msprt_uncapped": msprt_votes(policy, capped=False)}
    heavy, _ = simulate(
        Scenario("heavy", 0.6, heavy_share=args.heavy_share),
        heavy_judges,
        horizon=args.horizon,
        seed=args.seed + 4,
        **common,
    )
    for name, outcome in heavy.items():
        print(f"rate false_rollback_heavy_voter[{name}] {rate(outcome, ROLLBACK):.4f}")
    heavy_better, _ = simulate(
        Scenario("heavy_better", 0.6, effect=0.05, heavy_share=args.heavy_share),
        heavy_judges,
        horizon=args.ab_horizon,
        seed=args.seed + 5,
        **common,
    )
    for name, outcome in heavy_better.items():
        print(f"rate promoted_heavy_voter_against_+5pt[{name}] {rate(outcome, PROMOTE):.4f}")

    trips, _ = simulate(
        Scenario("trips", 0.02, spread=0.0),
        {"msprt": msprt_trips(policy), "z_test_peeking": z_test_trips(policy)},
        horizon=args.horizon,
        seed=args.seed + 6,
        **{**common, "cap": policy.max_requests_per_user},
    )
    for name, outcome in trips.items():
        print(f"rate false_stop_trips_aa[{name}] {rate(outcome, ROLLBACK):.4f}")

    print(f"check decide_agrees_with_vectorised {agreeing}/{checked}")
    print(f"seconds total {time.monotonic() - started:.0f}")


if __name__ == "__main__":
    main()
