"""A surge of negative texts about one company, against the company's own baseline: two CUSUMs.

Share: each text about a company is one Bernoulli trial (negative or not). With p0 the company's baseline share
of negative texts and p1 = p0 + shift the share to detect, the statistic

    S = max(0, S + x * log(p1 / p0) + (1 - x) * log((1 - p1) / (1 - p0)))

grows with every negative text and shrinks with every other one (Page 1954; Reynolds & Stoumbos 1999 for the
Bernoulli form). Rate: the company's negative texts as a Poisson process whose baseline rate is p0 over its usual
time between texts; at each negative text, the gap since the previous one adds log(k) - (k - 1) * rate * gap
(k = rate_factor), so a burst of bad news alerts even where the share rises little. An alert fires when either
sum passes `threshold` with at least `min_negative` negative texts in the run.

The baseline is an exponentially weighted share of the company's negative texts (half-life `baseline_texts`),
drawn toward the all-company share by `prior_texts` pseudo-texts; it learns only while both sums are under half
the threshold, and each text is judged against the baseline before it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class CompanyState:
    weight: float = 0.0  # exponentially weighted count of texts
    negative: float = 0.0  # ... of negative texts
    gap_s: float | None = None  # exponentially weighted time between its texts
    last_at: float | None = None  # its last text's time
    last_negative_at: float | None = None
    cusum: float = 0.0  # the share statistic
    rate_cusum: float = 0.0  # the rate statistic
    run: deque = field(default_factory=lambda: deque(maxlen=200))  # (text id, negative) since the sum left 0
    quiet_until: float = float("-inf")  # cooldown after an alert (text time, seconds)


@dataclass
class Surge:
    company: str
    at: float  # timestamp (s) of the text that tipped the sum
    cusum: float
    baseline: float
    share_negative: float  # in the run that fired
    texts: int
    negative: int
    text_ids: list[str]  # the run's texts, negative ones first


class SurgeDetector:
    def __init__(self, shift: float = 0.3, threshold: float = 8.0, min_negative: int = 4, baseline_texts: int = 100,
                 prior_texts: int = 20, cooldown_hours: float = 24.0, prior_share: float = 0.15,
                 rate_factor: float | None = 4.0):
        self.shift, self.threshold, self.min_negative, self.rate_factor = shift, threshold, min_negative, rate_factor
        self.decay = 0.5 ** (1.0 / baseline_texts)
        self.prior_texts, self.cooldown_s = prior_texts, cooldown_hours * 3600
        self.market = CompanyState(weight=prior_texts, negative=prior_share * prior_texts)  # all companies together
        self.companies: dict[str, CompanyState] = {}

    @classmethod
    def from_config(cls, alerts) -> SurgeDetector:
        return cls(alerts.shift, alerts.threshold, alerts.min_negative, alerts.baseline_texts, alerts.prior_texts,
                   alerts.cooldown_hours, rate_factor=alerts.rate_factor)

    def baseline(self, company: str) -> float:
        state = self.companies.get(company) or CompanyState()
        market = self.market.negative / self.market.weight
        share = (state.negative + self.prior_texts * market) / (state.weight + self.prior_texts) if (
            state.weight + self.prior_texts) > 0 else market
        return min(max(share, 0.01), 0.98 - self.shift)  # p0 and p1 inside (0, 1): both logs finite

    def observe(self, company: str, text_id: str, negative: bool, at: float) -> Surge | None:
        """One scored text about `company` (in arrival order); a Surge when this text makes the company alert."""
        state = self.companies.setdefault(company, CompanyState())
        p0 = self.baseline(company)
        p1 = p0 + self.shift
        state.cusum = max(0.0, state.cusum + (math.log(p1 / p0) if negative else math.log((1 - p1) / (1 - p0))))
        if negative and self.rate_factor and state.last_negative_at is not None and state.gap_s:
            # negative texts as a Poisson process of rate p0 / gap: the gap since the last one, under rate x factor
            # against the baseline rate (log-likelihood ratio of two exponentials)
            k, rate = self.rate_factor, p0 / state.gap_s
            gap = max(0.0, at - state.last_negative_at)
            state.rate_cusum = max(0.0, state.rate_cusum + math.log(k) - (k - 1) * rate * gap)
        if state.cusum == 0.0 and state.rate_cusum == 0.0:
            state.run.clear()
        else:
            state.run.append((text_id, negative))
        # the baseline learns only from texts seen while both sums are under half the threshold: a surge under way
        # must not raise its own yardstick (measured: more surges found at the same false-alert rate)
        for s in ((state, self.market) if max(state.cusum, state.rate_cusum) <= self.threshold / 2 else ()):
            s.weight = s.weight * self.decay + 1.0
            s.negative = s.negative * self.decay + float(negative)
        if state.last_at is not None:
            gap = max(1.0, at - state.last_at)
            state.gap_s = gap if state.gap_s is None else state.gap_s * self.decay + gap * (1 - self.decay)
        state.last_at = at
        if negative:
            state.last_negative_at = at
        negatives = sum(n for _, n in state.run)
        statistic = max(state.cusum, state.rate_cusum)
        if statistic <= self.threshold or negatives < self.min_negative:
            return None
        surge = Surge(company, at, statistic, p0, negatives / len(state.run), len(state.run), negatives,
                      [t for t, n in state.run if n] + [t for t, n in state.run if not n])
        state.cusum, state.rate_cusum, state.run = 0.0, 0.0, deque(maxlen=state.run.maxlen)
        if at < state.quiet_until:
            return None  # the same episode: it has alerted already
        state.quiet_until = at + self.cooldown_s
        return surge
