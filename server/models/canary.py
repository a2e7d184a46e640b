"""The live canary's verdict: promote the candidate, roll it back, or keep watching. Pure logic on counts, made to
be asked after every vote, so its error rates must hold however often it is asked.

Thumbs-up rate (candidate minus active) is judged by two one-sided mixture sequential probability ratio tests
(mSPRT): "the candidate is worse" (roll back, error rate `alpha_rollback` when it is in fact at least as good) and
"the candidate is not worse by more than `margin`" (promote, error rate `alpha_promote` when it is in fact worse by
more). Guardrail-trip rate and error rate get the same one-sided test for "the candidate's rate is higher", each
at `alpha_guardrail`. A fixed-horizon z-test asked after every vote would instead roll back a good candidate far
more often than its nominal rate; bench/canary.py measures both in one run.

Each user's counts are weighted by min(1, cap / their count): a user counts for at most `cap` votes (or requests)
and keeps their own up-rate, so one heavy voter cannot decide alone, yet every user's opinion is heard. Weighting
rather than "only their first `cap` votes" because votes can be changed or withdrawn and the registry reads current
votes grouped by user, which have no order. Votes of one user are correlated, so the variance of each arm's rate is
the larger of the binomial one and the cluster-robust (per-user) one.

The statistics work elementwise on numpy arrays too, so the bench runs thousands of streams through this code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.special import log_ndtr

from server.exceptions import InvalidInputError

Value = float | npt.NDArray[np.float64]
Flag = bool | npt.NDArray[np.bool_]
Counts = npt.NDArray[np.float64] | npt.NDArray[np.int64]


class InvalidCanaryInputError(InvalidInputError):
    """A canary policy value out of range, or counts that cannot be (more ups than votes)."""


class CanaryAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


@dataclass(frozen=True)
class CanaryPolicy:
    # Chance of rolling back a candidate whose up-rate is in truth at least the active one's, at most.
    alpha_rollback: float = 0.05
    # Chance of promoting a candidate whose up-rate is in truth more than `margin` below the active one's, at most.
    alpha_promote: float = 0.05
    # Non-inferiority margin on up-rate: a candidate this much worse or less still counts as "not worse".
    margin: float = 0.02
    # The spread of up-rate differences the vote tests are tuned for (the mixture's standard deviation): they decide
    # fastest on differences of about this size.
    mixture_sd: float = 0.05
    min_votes_per_arm: int = 50  # weighted votes, after the per-user cap
    min_users_per_arm: int = 10
    max_votes_per_user: int = 20
    # Chance of stopping a candidate whose trip rate (and, separately, error rate) is in truth no higher, at most.
    alpha_guardrail: float = 0.01
    trip_rate_tolerance: float = 0.0  # how much higher the candidate's trip rate may be before it is stopped
    error_rate_tolerance: float = 0.0
    rate_mixture_sd: float = 0.02  # trips and errors are rare: their tests are tuned for smaller differences
    min_requests_per_arm: int = 50  # weighted requests, after the per-user cap
    max_requests_per_user: int = 50

    def __post_init__(self) -> None:
        problems = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problems.append(f"{item.name} must be a whole number ≥ 1, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                problems.append(f"{item.name} must be a finite number, got {value!r}")
        if not problems:
            problems = self._range_problems()
        if problems:
            raise InvalidCanaryInputError("invalid canary policy: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        problems = [
            f"{name} must be in (0, 0.5], got {value}"
            for name, value in (
                ("alpha_rollback", self.alpha_rollback),
                ("alpha_promote", self.alpha_promote),
                ("alpha_guardrail", self.alpha_guardrail),
            )
            if not 0 < value <= 0.5
        ]
        problems += [
            f"{name} must be in [0, 1), got {value}"
            for name, value in (
                ("margin", self.margin),
                ("trip_rate_tolerance", self.trip_rate_tolerance),
                ("error_rate_tolerance", self.error_rate_tolerance),
            )
            if not 0 <= value < 1
        ]
        problems += [
            f"{name} must be in (0, 1], got {value}"
            for name, value in (("mixture_sd", self.mixture_sd), ("rate_mixture_sd", self.rate_mixture_sd))
            if not 0 < value <= 1
        ]
        # The per-user variance needs two users to exist at all.
        problems += [f"min_users_per_arm must be ≥ 2, got {self.min_users_per_arm}"] * (self.min_users_per_arm < 2)
        return problems


@dataclass(frozen=True)
class UserVotes:
    votes: int
    ups: int


@dataclass(frozen=True)
class UserRequests:
    requests: int
    trips: int  # answers the output rails stopped
    errors: int  # requests that failed


@dataclass(frozen=True)
class ArmStats:
    """What one arm (the active version or the candidate) got during the canary, per user: for the registry, one
    GROUP BY user over the answers that version gave, counting current votes (a changed vote once, a withdrawn one
    not at all)."""

    votes: Mapping[Hashable, UserVotes] = field(default_factory=dict)
    requests: Mapping[Hashable, UserRequests] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for user, tally in self.votes.items():
            if not 0 <= tally.ups <= tally.votes:
                raise InvalidCanaryInputError(f"user {user!r}: {tally.ups} thumbs-up out of {tally.votes} votes")
        for user, tally in self.requests.items():
            if not (0 <= tally.trips <= tally.requests and 0 <= tally.errors <= tally.requests):
                raise InvalidCanaryInputError(
                    f"user {user!r}: {tally.trips} trips and {tally.errors} errors out of {tally.requests} requests"
                )

    @classmethod
    def from_events(
        cls, votes: Iterable[tuple[Hashable, bool]] = (), requests: Iterable[tuple[Hashable, bool, bool]] = ()
    ) -> ArmStats:
        """From (user, thumbs_up) votes and (user, tripped, failed) requests."""
        vote_counts: Counter[Hashable] = Counter()
        up_counts: Counter[Hashable] = Counter()
        for user, up in votes:
            vote_counts[user] += 1
            up_counts[user] += bool(up)
        request_counts: dict[Hashable, list[int]] = {}
        for user, tripped, failed in requests:
            tally = request_counts.setdefault(user, [0, 0, 0])
            tally[0] += 1
            tally[1] += bool(tripped)
            tally[2] += bool(failed)
        return cls(
            votes={user: UserVotes(count, up_counts[user]) for user, count in vote_counts.items()},
            requests={user: UserRequests(*tally) for user, tally in request_counts.items()},
        )


@dataclass(frozen=True)
class WeightedTally:
    """One rate of one arm with user u weighted by w_u = min(1, cap / n_u): the sums its estimate needs."""

    users: Value
    trials: Value  # Σ w n
    hits: Value  # Σ w k
    hits_sq: Value  # Σ (w k)²
    hits_trials: Value  # Σ (w k)(w n)
    trials_sq: Value  # Σ (w n)²

    @classmethod
    def from_user_counts(cls, counts: Iterable[tuple[int, int]], cap: int) -> WeightedTally:
        """From (trials, hits) per user."""
        trials, hits = np.array(list(counts), dtype=np.float64).reshape(-1, 2).T
        return cls(*weighted_terms(trials, hits, cap).sum(axis=-1))


def weighted_terms(trials: Counts, hits: Counts, cap: int) -> npt.NDArray[np.float64]:
    """Each user's terms of WeightedTally's sums, stacked on a new first axis in the order of its fields (a user
    with no trials adds nothing)."""
    weight = np.minimum(1.0, cap / np.maximum(trials, 1))
    weighted_trials, weighted_hits = weight * trials, weight * hits
    return np.stack(
        [
            (trials > 0).astype(np.float64),
            weighted_trials,
            weighted_hits,
            weighted_hits**2,
            weighted_hits * weighted_trials,
            weighted_trials**2,
        ]
    )


def rate_and_variance(tally: WeightedTally) -> tuple[Value, Value]:
    """The arm's weighted rate and its variance: the larger of the binomial variance (rate shrunk towards ½ by one
    pseudo-hit and one pseudo-miss, so 0 of 50 still has some) and the cluster-robust one over users
    (Σ_u w_u²(k_u - rate·n_u)² / (Σ w n)², with the G/(G-1) small-sample factor)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = tally.hits / tally.trials
        shrunk = (tally.hits + 1) / (tally.trials + 2)
        binomial = shrunk * (1 - shrunk) / tally.trials
        residual_sq = tally.hits_sq - 2 * rate * tally.hits_trials + rate**2 * tally.trials_sq
        clustered = tally.users / (tally.users - 1) * residual_sq / tally.trials**2
        return rate, np.fmax(binomial, clustered)


def log_evidence(excess: Value, variance: Value, mixture_sd: float) -> Value:
    """Log of the one-sided normal-mixture SPRT statistic against "the true difference is at most
    estimate - excess", for an estimate with this variance. Rejecting when it reaches log(1/alpha) errs with
    probability at most alpha however often it is checked (Ville's inequality).

    With v = 1/variance the information so far, S = excess / variance is, in the normal limit, Brownian motion in
    v with drift (true difference - null): the canonical joint distribution, which the difference of two rates
    follows however the votes fall between the arms (Jennison & Turnbull 2000, Group Sequential Methods, ch. 11).
    Mixing exp(λS - λ²v/2) over a half-normal λ ≥ 0 with precision rho = 1/τ² (τ = mixture_sd) gives (Robbins
    1970; the one-sided normal mixture of Howard, Ramdas, McAuliffe & Sekhon 2021, Ann. Statist. 49(2), as in
    confseq's OneSidedNormalMixture):
        M = 2 √(rho / (v + rho)) · exp(S² / (2(v + rho))) · Φ(S / √(v + rho))
    written below with a = variance, t = τ². It is a supermartingale whenever the true difference is at or below
    the null's, so the test holds for that whole composite null. The two-sided version is Johari et al.'s mSPRT
    (Oper. Res. 2022). The variance is estimated, and votes are not Gaussian: bench/canary.py checks the error
    rates by simulation."""
    a = variance
    t = mixture_sd**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            math.log(2)
            + 0.5 * np.log(a / (a + t))
            + excess**2 * t / (2 * a * (a + t))
            + log_ndtr(excess * math.sqrt(t) / np.sqrt(a * (a + t)))
        )


def bound_distance(variance: float, alpha: float, mixture_sd: float) -> float | None:
    """How far below (or above) the estimate the always-valid one-sided 1 - alpha bound lies: the excess at which
    log_evidence reaches log(1/alpha). Bracketed by the two-sided mixture's closed-form distance, where the
    one-sided statistic is already past the threshold."""
    if not math.isfinite(variance) or variance <= 0:
        return None
    t = mixture_sd**2
    threshold = math.log(1 / alpha)
    two_sided = math.sqrt(variance * (variance + t) / t * (2 * threshold + math.log1p(t / variance)))
    # To a millionth of a point: the bound is for people to read.
    return brentq(
        lambda excess: float(log_evidence(excess, variance, mixture_sd)) - threshold, 0.0, two_sided, xtol=1e-8
    )


def _enough(active: WeightedTally, candidate: WeightedTally, min_weight: int, min_users: int) -> Flag:
    return (np.minimum(active.trials, candidate.trials) >= min_weight) & (
        np.minimum(active.users, candidate.users) >= min_users
    )


@dataclass(frozen=True)
class VoteEvidence:
    enough: Flag  # both arms have the minimum weighted votes and users
    worse: Flag  # the candidate's up-rate is below the active one's, at alpha_rollback
    not_worse: Flag  # the candidate's up-rate is above active - margin, at alpha_promote


def judge_votes(active: WeightedTally, candidate: WeightedTally, policy: CanaryPolicy) -> VoteEvidence:
    active_rate, active_variance = rate_and_variance(active)
    candidate_rate, candidate_variance = rate_and_variance(candidate)
    difference = candidate_rate - active_rate
    variance = active_variance + candidate_variance
    enough = _enough(active, candidate, policy.min_votes_per_arm, policy.min_users_per_arm)
    with np.errstate(invalid="ignore"):
        worse = log_evidence(-difference, variance, policy.mixture_sd) >= math.log(1 / policy.alpha_rollback)
        not_worse = log_evidence(difference + policy.margin, variance, policy.mixture_sd) >= math.log(
            1 / policy.alpha_promote
        )
    return VoteEvidence(enough=enough, worse=enough & worse, not_worse=enough & not_worse)


def judge_rate_increase(
    active: WeightedTally, candidate: WeightedTally, tolerance: float, policy: CanaryPolicy
) -> tuple[Flag, Flag]:
    """(enough requests, the candidate's rate exceeds the active one's by more than `tolerance`) for trips or
    errors, at alpha_guardrail."""
    active_rate, active_variance = rate_and_variance(active)
    candidate_rate, candidate_variance = rate_and_variance(candidate)
    enough = _enough(active, candidate, policy.min_requests_per_arm, policy.min_users_per_arm)
    with np.errstate(invalid="ignore"):
        higher = log_evidence(
            candidate_rate - active_rate - tolerance, active_variance + candidate_variance, policy.rate_mixture_sd
        ) >= math.log(1 / policy.alpha_guardrail)
    return enough, enough & higher


@dataclass(frozen=True)
class RateComparison:
    """One rate in both arms, for people to read. Weights are after the per-user cap. The bounds are always-valid:
    for votes the lower one is at alpha_promote and the upper one at alpha_rollback; for trips and errors both are
    at alpha_guardrail. None where an arm has no data yet."""

    active_rate: float | None
    candidate_rate: float | None
    difference: float | None  # candidate - active
    lower_bound: float | None
    upper_bound: float | None
    active_weight: float
    candidate_weight: float
    active_users: int
    candidate_users: int


@dataclass(frozen=True)
class CanaryDecision:
    action: CanaryAction
    reason: str
    votes: RateComparison  # thumbs-up rate
    trips: RateComparison  # guardrail-trip rate
    errors: RateComparison  # error rate


def _optional(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _compare(
    active: WeightedTally, candidate: WeightedTally, lower_alpha: float, upper_alpha: float, mixture_sd: float
) -> RateComparison:
    active_rate, active_variance = rate_and_variance(active)
    candidate_rate, candidate_variance = rate_and_variance(candidate)
    difference = _optional(candidate_rate - active_rate)
    variance = float(active_variance + candidate_variance)
    below = bound_distance(variance, lower_alpha, mixture_sd) if difference is not None else None
    above = bound_distance(variance, upper_alpha, mixture_sd) if difference is not None else None
    return RateComparison(
        active_rate=_optional(active_rate),
        candidate_rate=_optional(candidate_rate),
        difference=difference,
        lower_bound=None if below is None or difference is None else difference - below,
        upper_bound=None if above is None or difference is None else difference + above,
        active_weight=float(active.trials),
        candidate_weight=float(candidate.trials),
        active_users=int(active.users),
        candidate_users=int(candidate.users),
    )


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} pts"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def decide(active: ArmStats, candidate: ArmStats, policy: CanaryPolicy | None = None) -> CanaryDecision:
    """The canary's verdict from everything each arm got so far. Safe to call after every vote."""
    policy = policy or CanaryPolicy()
    vote_tallies = [
        WeightedTally.from_user_counts(((t.votes, t.ups) for t in arm.votes.values()), policy.max_votes_per_user)
        for arm in (active, candidate)
    ]
    trip_tallies, error_tallies = (
        [
            WeightedTally.from_user_counts(
                ((t.requests, getattr(t, kind)) for t in arm.requests.values()), policy.max_requests_per_user
            )
            for arm in (active, candidate)
        ]
        for kind in ("trips", "errors")
    )
    figures = {
        "votes": _compare(*vote_tallies, policy.alpha_promote, policy.alpha_rollback, policy.mixture_sd),
        "trips": _compare(*trip_tallies, policy.alpha_guardrail, policy.alpha_guardrail, policy.rate_mixture_sd),
        "errors": _compare(*error_tallies, policy.alpha_guardrail, policy.alpha_guardrail, policy.rate_mixture_sd),
    }

    def verdict(action: CanaryAction, reason: str) -> CanaryDecision:
        return CanaryDecision(action=action, reason=reason, **figures)

    enough_requests = True
    for kind, tallies, tolerance in (
        ("error", error_tallies, policy.error_rate_tolerance),
        ("guardrail-trip", trip_tallies, policy.trip_rate_tolerance),
    ):
        enough, higher = judge_rate_increase(*tallies, tolerance, policy)
        enough_requests = enough_requests and bool(enough)
        if higher:
            shown = figures["errors" if kind == "error" else "trips"]
            return verdict(
                CanaryAction.ROLLBACK,
                f"candidate's {kind} rate is higher: {_percent(shown.candidate_rate)} vs "
                f"{_percent(shown.active_rate)} (difference at least {_points(shown.lower_bound)}, "
                f"tolerance {_points(tolerance)})",
            )

    shown = figures["votes"]
    evidence = judge_votes(*vote_tallies, policy)
    if not evidence.enough:
        return verdict(
            CanaryAction.CONTINUE,
            f"waiting for votes: {shown.active_weight:.0f} (active) and {shown.candidate_weight:.0f} (candidate) "
            f"weighted votes from {shown.active_users} and {shown.candidate_users} users; each arm needs "
            f"{policy.min_votes_per_arm} from {policy.min_users_per_arm}",
        )
    summary = (
        f"thumbs-up {_percent(shown.candidate_rate)} (candidate) vs {_percent(shown.active_rate)} (active), "
        f"difference {_points(shown.difference)} within [{_points(shown.lower_bound)}, {_points(shown.upper_bound)}]"
    )
    if evidence.worse:
        return verdict(CanaryAction.ROLLBACK, f"candidate is worse: {summary}")
    if evidence.not_worse:
        if not enough_requests:
            return verdict(
                CanaryAction.CONTINUE,
                f"votes favour promotion but too few requests to judge trips and errors: {summary}",
            )
        return verdict(
            CanaryAction.PROMOTE,
            f"candidate is not worse than active by more than {100 * policy.margin:.1f} pts: {summary}",
        )
    return verdict(CanaryAction.CONTINUE, f"no decision yet: {summary}")
