"""Privacy accounting for the Poisson-subsampled Gaussian mechanism (DP-SGD).

Thin functions over trusted libraries: Opacus' PRV accountant (``"prv"``, the default, tight),
dp-accounting's PLD accountant (``"pld"``, tight, the independent cross-check) and dp-accounting's RDP
accountant (``"rdp"``, a looser upper bound that is cheap to evaluate).

A run may compose several mechanisms (different sample rates and noise multipliers, for instance a
student and a discriminator); ``composed_epsilon`` takes them all and composes them with the accountant's
own composition of different events, never by adding epsilons.

Small epsilons (much noise) stay bounded in memory and time:
- when RDP's bound is 0 (so much noise that the mechanism is (0, delta)-DP), that is the answer: no accountant
  can report less, and the tight ones would be asked for a grid of zero spacing;
- Opacus' PRV grid has at least 6 / mesh points with mesh = eps_error / sqrt(T log(12 / delta_error) / 2), whatever
  epsilon is, so a small epsilon over many steps asks for a huge grid (a 1e-4 target once took 22.5 GB). Where it
  would exceed ``PRV_MAX_GRID_POINTS``, ``"prv"`` gives dp-accounting's PLD bound instead -- tight and a valid upper
  bound too, cheap at small epsilons -- and ``prv_falls_back`` says so, for the commands to tell the user.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import dp_accounting

ACCOUNTANTS = ("prv", "pld", "rdp")

# Discretisation relative to the epsilon being measured: small enough that a calibrated sigma lands
# within ~0.1% of the exact value, large enough that one evaluation takes well under a second.
_PRV_RELATIVE_EPS_ERROR = 3e-3
_PLD_RELATIVE_DISCRETISATION = 1e-3
# The most points of Opacus' PRV grid before "prv" falls back to PLD: some 700 MB and 5 s an evaluation on a CPU
# core (about 170 bytes and 1.2 us a point, measured); the plan of preset mnist-eps0.2 needs 2.0e6 (2.4e6 with L).
PRV_MAX_GRID_POINTS = 4_000_000
# Evaluations kept per process: an accountant's answer is a pure function of the events and delta, and a plan is
# asked about the same events again (a calibration's first steps, a dry run and the run it plans, a resumed ledger).
_CACHED_EVALUATIONS = 4096
# Calibration stops when the bracket around sigma is this tight (relative).
_SIGMA_RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SampledGaussian:
    """``steps`` compositions of the Gaussian mechanism with Poisson subsampling at ``sample_rate``.

    ``noise_multiplier`` is sigma / C: the noise standard deviation over the per-example clip norm.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must lie in (0, 1], got {self.sample_rate}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, got {self.steps}")

    def dp_event(self) -> dp_accounting.DpEvent:
        step = dp_accounting.PoissonSampledDpEvent(
            self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(step, int(self.steps))


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """RDP warns (through absl) about orders it cannot evaluate and drops them soundly; keep that quiet."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl_logger.setLevel(level)


@functools.lru_cache(maxsize=_CACHED_EVALUATIONS)
def _rdp_epsilon(events: tuple[SampledGaussian, ...], delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([e.dp_event() for e in events]))
    return float(accountant.get_epsilon(delta))


def _pld_epsilon(events: Sequence[SampledGaussian], delta: float, rdp_bound: float) -> float:
    interval = _PLD_RELATIVE_DISCRETISATION * min(1.0, rdp_bound)
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_accounting.ComposedDpEvent([e.dp_event() for e in events]))
    return float(accountant.get_epsilon(delta))


def _prv_grid_points(events: Sequence[SampledGaussian], delta: float, rdp_bound: float) -> float:
    """The fewest points Opacus' PRV accountant discretises on for ``events`` at our ``eps_error`` and its default
    ``delta_error``: its grid spans [-L, L] with L = 3 + (an RDP bound at delta_error / 4) >= 3, over the mesh
    eps_error / sqrt(T log(12 / delta_error) / 2) (``PRVAccountant._get_domain``). At small epsilons L is near 3,
    so this is the grid's size; at large ones the mesh is coarse and the grid small. Computed without L: cheap."""
    eps_error, delta_error = _PRV_RELATIVE_EPS_ERROR * rdp_bound, delta / 1000
    mesh = eps_error / math.sqrt(sum(int(e.steps) for e in events) * math.log(12 / delta_error) / 2)
    return 2 * 3 / mesh


def _prv_epsilon(events: Sequence[SampledGaussian], delta: float, rdp_bound: float) -> float:
    from opacus.accountants import PRVAccountant

    if _prv_grid_points(events, delta, rdp_bound) > PRV_MAX_GRID_POINTS:
        return _pld_epsilon(events, delta, rdp_bound)
    accountant = PRVAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, int(e.steps)) for e in events]
    return float(accountant.get_epsilon(delta, eps_error=_PRV_RELATIVE_EPS_ERROR * rdp_bound))


def _private_events(events: Sequence[SampledGaussian]) -> list[SampledGaussian]:
    return [e for e in events if e.steps > 0]


def prv_falls_back(events: Sequence[SampledGaussian], *, delta: float) -> bool:
    """Whether ``"prv"`` gives PLD's bound for ``events``: its grid would exceed ``PRV_MAX_GRID_POINTS`` (an epsilon
    small for the number of steps). Both are valid upper bounds; the commands say which one was used."""
    _check_delta(delta)
    events = tuple(_private_events(events))
    if not events or any(e.noise_multiplier == 0 for e in events):
        return False
    with _quiet():
        rdp_bound = _rdp_epsilon(events, delta)
        return 0 < rdp_bound < math.inf and _prv_grid_points(events, delta, rdp_bound) > PRV_MAX_GRID_POINTS


def composed_epsilon(events: Sequence[SampledGaussian], *, delta: float, accountant: str = "prv") -> float:
    """Epsilon at ``delta`` of the composition of all ``events``."""
    _check_accountant(accountant)
    _check_delta(delta)
    return _composed_epsilon(tuple(_private_events(events)), delta, accountant)


@functools.lru_cache(maxsize=_CACHED_EVALUATIONS)
def _composed_epsilon(events: tuple[SampledGaussian, ...], delta: float, accountant: str) -> float:
    if not events:
        return 0.0
    if any(e.noise_multiplier == 0 for e in events):
        return math.inf
    with _quiet():
        rdp_bound = _rdp_epsilon(events, delta)
        if accountant == "rdp" or rdp_bound == 0:  # 0: (0, delta)-DP already; nothing reports less
            return rdp_bound
        if accountant == "pld":
            return _pld_epsilon(events, delta, rdp_bound)
        return _prv_epsilon(events, delta, rdp_bound)


def clear_cache() -> None:
    """Forget the evaluations kept in this process (for a check that the accountants themselves are asked)."""
    _composed_epsilon.cache_clear()
    _rdp_epsilon.cache_clear()


def epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps at Poisson rate ``sample_rate`` and noise multiplier sigma."""
    event = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    return composed_epsilon([event], delta=delta, accountant=accountant)


def calibrate(
    epsilon_of: Callable[[float], float], *, target_epsilon: float, initial_guess: float = 1.0
) -> float:
    """The smallest scale ``s`` (to within 0.1%) with ``epsilon_of(s) <= target_epsilon``.

    ``epsilon_of`` must decrease in ``s``. The returned value always satisfies the target: it is the upper
    end of the final bracket.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
    hi = max(initial_guess, 1e-3)
    while epsilon_of(hi) > target_epsilon:
        hi *= 1.5
        if hi > 1e6:
            raise ValueError(f"no noise multiplier below 1e6 reaches epsilon {target_epsilon}")
    lo = hi / 1.5
    while epsilon_of(lo) <= target_epsilon:
        hi, lo = lo, lo / 1.5
        if lo < 1e-4:
            return hi
    while hi / lo - 1.0 > _SIGMA_RELATIVE_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if epsilon_of(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def noise_multiplier(
    *, target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """The noise multiplier sigma such that ``steps`` DP-SGD steps spend at most ``target_epsilon``."""
    _check_accountant(accountant)
    _check_delta(delta)
    SampledGaussian(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)  # validates the inputs
    if steps == 0:
        return 0.0

    def epsilon_at(name: str) -> Callable[[float], float]:
        return lambda sigma: epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=name
        )

    # RDP bounds the tight accountants from above, so its (cheap) sigma is feasible for them: a tight
    # bracket to start the expensive search from.
    sigma_rdp = calibrate(epsilon_at("rdp"), target_epsilon=target_epsilon)
    if accountant == "rdp":
        return sigma_rdp
    return calibrate(epsilon_at(accountant), target_epsilon=target_epsilon, initial_guess=sigma_rdp)
