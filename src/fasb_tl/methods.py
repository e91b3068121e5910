"""The steering methods, and the FASB trigger rule, in one place.

Every list of methods in the package (generation, scoring, the evaluation layer, the CLI's defaults, the
tables) is derived from :data:`METHOD_SPECS`, and both the decode loop and the multiple-choice scorer decide a
trigger with :func:`decide`. A new method is one row of the table (and, if its gate is new, one branch in the
decode loop and the scorer).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

FLOAT32_MAX = 3.4028234663852886e38

Gate = Literal["never", "always", "question", "monitor"]
Vector = Literal["probe", "caa"]


@dataclass(frozen=True)
class MethodSpec:
    """What a method does.

    ``gate``: when steering starts: ``never``, ``always`` (from the first generated token), ``question`` (once,
    from the probes at the prompt's last token) or ``monitor`` (the probes check the answer as it grows).
    ``adaptive``: the strength is ``1 - p_true`` at the trigger, else 1. ``backtracks``: a trigger drops the
    last ``back_steps`` tokens, else keeps them all. ``vector``: the probes' head directions, or the CAA
    baseline's residual vector (run by the decode loop and scorer as ``iti`` with that vector).
    """

    name: str
    gate: Gate
    adaptive: bool = False
    backtracks: bool = False
    vector: Vector = "probe"

    @property
    def monitors(self) -> bool:
        return self.gate == "monitor"

    @property
    def gated(self) -> bool:
        """Whether a probe threshold decides when it steers (so it has a threshold to calibrate)."""
        return self.gate in ("question", "monitor")

    @property
    def steers(self) -> bool:
        return self.gate != "never"


METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("none", gate="never"),
    MethodSpec("iti", gate="always"),
    MethodSpec("caa", gate="always", vector="caa"),
    MethodSpec("question", gate="question", adaptive=True),
    MethodSpec("no_backtrack", gate="monitor", adaptive=True),
    MethodSpec("fixed", gate="monitor", backtracks=True),
    MethodSpec("fasb", gate="monitor", adaptive=True, backtracks=True),
)
SPECS = {spec.name: spec for spec in METHOD_SPECS}

# Every method, in the order of the paper's tables.
ALL_METHODS = tuple(SPECS)
# The methods the decode loop and the scorer run themselves (CAA runs as `iti` with its own vector).
DECODE_METHODS = tuple(s.name for s in METHOD_SPECS if s.vector == "probe")
MONITORING_METHODS = tuple(s.name for s in METHOD_SPECS if s.monitors)
GATED_METHODS = tuple(s.name for s in METHOD_SPECS if s.gated)
# Methods whose head directions a control (reversed, random) replaces.
CONTROLLED_METHODS = tuple(s.name for s in METHOD_SPECS if s.steers and s.vector == "probe")


class UnknownMethodError(ValueError):
    """A method name that is not in the table."""


def check_methods(names: Sequence[str], among: Sequence[str] = ALL_METHODS, what: str = "methods") -> None:
    """Raise :class:`UnknownMethodError` naming every unknown name in ``names``."""
    unknown = [name for name in names if name not in among]
    if unknown:
        raise UnknownMethodError(f"unknown {what} {unknown}: expected some of {tuple(among)}")


@dataclass(frozen=True)
class Trigger:
    """A trigger: how many answer tokens are kept, and the strength of the steering that follows."""

    p_true: float
    kept: int
    strength: float


def strength(method: MethodSpec, p_true: float) -> float:
    """The steering strength after a trigger at ``p_true``."""
    return 1.0 - p_true if method.adaptive else 1.0


def decide(method: MethodSpec, p_true: float, n: int, back_steps: int, threshold: float) -> Trigger | None:
    """The FASB decision at a check after the answer's ``n``-th token (``n = 0``: the question gate, before
    any answer token): a trigger when ``p_true < threshold``, keeping ``n - back_steps`` tokens (at least 0)
    if the method backtracks, else all ``n``."""
    if not p_true < threshold:
        return None
    kept = max(n - back_steps, 0) if method.backtracks else n
    return Trigger(p_true=p_true, kept=kept, strength=strength(method, p_true))


def generation_checks(n: int, back_steps: int, at_end: bool) -> bool:
    """Whether the decode loop checks after the ``n``-th generated token: once ``back_steps`` tokens exist
    (the released code's rule), and always at the end of the answer (EOS or the token budget)."""
    return n >= back_steps or at_end


def scoring_checks(n: int, back_steps: int, at_end: bool) -> bool:
    """Whether the ``paper`` MC protocol checks at the answer's ``n``-th token: the released MC code skips the
    first ``back_steps`` answer tokens (one more than generation waits), and always checks the last."""
    return n > back_steps or at_end


CheckSchedule = Callable[[int, int, bool], bool]


def first_trigger(
    method: MethodSpec,
    p_trace: Sequence[float],
    back_steps: int,
    threshold: float,
    checks: CheckSchedule = generation_checks,
) -> tuple[int, Trigger] | None:
    """The first trigger along ``p_trace`` (``p_trace[n - 1]`` is the value checked after the ``n``-th token;
    the trace ends with the answer) as ``(n, trigger)``, or None."""
    for n, p_true in enumerate(p_trace, start=1):
        if checks(n, back_steps, n == len(p_trace)):
            trigger = decide(method, float(p_true), n, back_steps, threshold)
            if trigger is not None:
                return n, trigger
    return None


@dataclass(frozen=True)
class MethodSettings:
    """The settings every steering config shares, validated on creation: the one home of these rules.

    Subclasses (``GenerationConfig``, ``ScoringConfig``) name the methods they accept and their error class.
    ``threshold`` outside ``[0, 1]`` needs ``force_threshold=True`` (to force or forbid every trigger in tests
    and benchmarks).
    """

    method: str = "fasb"
    alpha: float = 15.0
    threshold: float = 0.6
    back_steps: int = 10
    force_threshold: bool = False

    accepted: ClassVar[tuple[str, ...]] = ALL_METHODS
    error: ClassVar[type[ValueError]] = ValueError

    def __post_init__(self) -> None:
        self.check_one_of("method", self.accepted)
        self.check_number("alpha")
        self.check_number("threshold")
        self.check_number("back_steps", integer=True)
        # The steering scale alpha * strength (strength <= 1) is a float32 tensor.
        if not 0 <= self.alpha <= FLOAT32_MAX:
            raise self.error(
                f"alpha must be >= 0 and finite in float32 (at most {FLOAT32_MAX:.2e}), got {self.alpha}"
            )
        if not self.force_threshold and not 0.0 <= self.threshold <= 1.0:
            raise self.error(
                f"threshold must be in [0, 1], got {self.threshold} (pass force_threshold=True to allow it)"
            )
        if self.back_steps < 0:
            raise self.error(f"back_steps must be >= 0, got {self.back_steps}")

    def check_number(self, name: str, integer: bool = False) -> None:
        """Raise the config's error unless the setting ``name`` is a real number (an integer with ``integer``);
        a bool is neither, and a float is no integer (``max_new_tokens=2.5`` would otherwise mean 3)."""
        value = getattr(self, name)
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = "an integer" if integer else "a number"
            raise self.error(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")

    def check_one_of(self, name: str, allowed: Sequence[str]) -> None:
        """Raise the config's error unless the setting ``name`` is one of ``allowed``."""
        value = getattr(self, name)
        if value not in allowed:
            raise self.error(f"{name} must be one of {tuple(allowed)}, got {value!r}")

    @property
    def spec(self) -> MethodSpec:
        """The method's row of :data:`METHOD_SPECS`."""
        return SPECS[self.method]
