"""The strategies ``edgeloop evaluate`` compares: what an engine does after its first model.

Every strategy drives its own :class:`~edgeloop.engine.engine.Engine` built by
:func:`~edgeloop.service.edge.build_engine` (the live edge's own construction); they differ only in
the drift guard the engine gets and in who asks for retrains:

- ``persistence``: no model at all; the floor every model must beat.
- ``static``: the initial model, never retrained (its guard never alarms).
- ``periodic``: the initial model, retrained every N readings by the replay itself.
- ``original``: the original system's rule, rolling RMSE over ``drift.window`` > an absolute
  threshold, with no warm-up and no budget. Its only guard is a gap of ``retrain_min_samples``: the
  engine restarts its post-alarm wait on every alarm, so an alarm on every sample would never
  let a retrain through (see the report).
- ``rmse-threshold``, ``relative``, ``page-hinkley``, ``adwin``: edgeloop's policies exactly as
  configured (``drift.*``), guard included. ``POLICY[:key=value,...]`` is a variant with
  :class:`~edgeloop.config.DriftSettings` overrides, e.g. ``page-hinkley:ph_threshold=200``.
- ``river-adwin``, ``river-ph``: ``river.drift.ADWIN()`` / ``river.drift.PageHinkley()`` with
  library defaults fed ``|error|`` (or the raw error) in target units: no normalisation, no warm-up,
  no budget; the same gap as ``original``. Reference detectors, not candidates.
- ``river-arf``: no engine at all: River's adaptive random forest learning after every reading
  (:mod:`~edgeloop.evaluate.learner`), the continuously learning bar to clear. It costs about 2 ms a
  reading, so it runs on recordings and CSV files, and on simulator scenarios only with
  ``--arf-on-sim``.

Every retrain, whoever asks for it, goes through the same validated promotion and probation.

>>> [s.name for s in parse_strategies(["all"])][:4]
['persistence', 'static', 'periodic', 'original']
>>> s = parse_strategy("page-hinkley:ph_threshold=200,min_gap=1000")
>>> s.family, s.policy, s.overrides
('policy', 'page-hinkley', (('ph_threshold', 200.0), ('min_gap', 1000)))
>>> DEFAULT_POLICY in [s.name for s in parse_strategies(["all"]) if s.default]
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from river import drift as river_drift

from edgeloop.config import DriftSettings, Settings
from edgeloop.drift import DriftGuard, RmseThreshold
from edgeloop.engine.engine import Engine
from edgeloop.engine.monitor import RollingRmse
from edgeloop.evaluate.learner import N_MODELS
from edgeloop.service.edge import build_engine

BASELINES = ("persistence", "static", "periodic")
POLICIES = ("rmse-threshold", "relative", "page-hinkley", "adwin")
REFERENCES = ("river-adwin", "river-ph")
LEARNERS = ("river-arf",)
STRATEGY_NAMES = (*BASELINES, "original", *POLICIES, *REFERENCES, *LEARNERS)
DEFAULT_POLICY: str = DriftSettings().policy
# A budget no stream reaches: "no budget" for the unguarded strategies.
_NO_BUDGET = 10**9


@dataclass(frozen=True)
class Strategy:
    """One strategy; ``name`` is its spec (``page-hinkley:ph_threshold=200`` for a variant)."""

    name: str
    family: str  # baseline | original | policy | reference | learner
    policy: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    default: bool = False

    @property
    def uses_model(self) -> bool:
        return self.name != "persistence"

    @property
    def alarms(self) -> bool:
        """Whether the strategy's drift alarms ask for retrains (and so are scored as detections)."""
        return self.family not in ("baseline", "learner")

    def describe(self, settings: Settings, *, periodic_every: int, river_input: str) -> str:
        d = settings.drift
        w = d.window
        if self.name == "persistence":
            return "repeat the last reading; no model"
        if self.name == "static":
            return "initial model, never retrained"
        if self.name == "periodic":
            return f"initial model, retrained every {periodic_every} readings"
        if self.name == "original":
            return f"rolling RMSE over {w} > absolute threshold; no warm-up or budget"
        if self.family == "learner":
            return (
                f"river.forest.ARFRegressor({N_MODELS} trees) on the change from {settings.model.lags} lags, "
                "learning after every reading; no engine, no retrains"
            )
        if self.family == "reference":
            cls = "ADWIN" if self.name == "river-adwin" else "PageHinkley"
            fed = "|e|" if river_input == "abs" else "e"
            return f"river.drift.{cls}() defaults on {fed} in target units; no guard"
        s = strategy_settings(self, settings).drift
        guard = f"warm-up {s.warmup}, gap {s.min_gap}, budget {s.budget}/{s.budget_window}"
        if s.policy == "rmse-threshold":
            rule = f"rolling RMSE over {s.window} > absolute threshold"
        elif s.policy == "relative":
            rule = f"rolling RMSE over {s.window} > {s.relative_factor:g} x live reference"
        elif s.policy == "page-hinkley":
            rule = f"Page-Hinkley on |e|/scale, threshold {s.ph_threshold:g}, delta {s.ph_delta:g}"
        else:
            rule = f"ADWIN on |e|/scale, delta {s.adwin_delta:g}, increases only"
        return f"{rule}; {guard}"


def parse_strategy(text: str) -> Strategy:
    """A strategy name, or ``POLICY:key=value,...`` for a policy with :class:`DriftSettings` overrides."""
    text = text.strip()
    name, _, opts = text.partition(":")
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)} (or all)")
    if name in BASELINES:
        family = "baseline"
    elif name == "original":
        family = "original"
    elif name in REFERENCES:
        family = "reference"
    elif name in LEARNERS:
        family = "learner"
    else:
        family = "policy"
    if opts and family != "policy":
        raise ValueError(f"strategy {name!r} takes no options; only the policies {', '.join(POLICIES)} do")
    overrides: list[tuple[str, Any]] = []
    if opts:
        raw: dict[str, str] = {}
        for item in opts.split(","):
            key, sep, value = (p.strip() for p in item.partition("="))
            if not sep or key not in DriftSettings.model_fields or key == "policy":
                raise ValueError(f"bad option {item!r} in {text!r}: expected DRIFT_KEY=VALUE")
            raw[key] = value
        try:
            checked = DriftSettings.model_validate({"policy": name, **raw})
        except ValueError as exc:
            raise ValueError(f"bad options in strategy {text!r}: {exc}") from None
        overrides = [(key, getattr(checked, key)) for key in raw]
    return Strategy(
        name=text if overrides else name,
        family=family,
        policy=name if family == "policy" else None,
        overrides=tuple(overrides),
        default=family == "policy" and name == DEFAULT_POLICY and not overrides,
    )


def parse_strategies(texts: Sequence[str]) -> list[Strategy]:
    """Specs separated by commas or given one by one; ``all`` is every built-in strategy.

    Commas inside a variant's options are kept with it: ``page-hinkley:ph_threshold=200,ph_delta=1``.
    """
    out: list[Strategy] = []
    for text in texts:
        for part in _split(text):
            items = [parse_strategy(n) for n in STRATEGY_NAMES] if part == "all" else [parse_strategy(part)]
            out.extend(s for s in items if s.name not in {o.name for o in out})
    if not out:
        raise ValueError("no strategy given")
    return out


def _split(text: str) -> list[str]:
    parts: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if "=" in piece and ":" not in piece and parts and ":" in parts[-1]:
            parts[-1] += "," + piece  # another option of the previous variant
        else:
            parts.append(piece)
    return parts


def strategy_settings(strategy: Strategy, base: Settings, *, threshold: float | None = None) -> Settings:
    """``base`` with this strategy's drift policy and overrides (and the absolute threshold)."""
    update: dict[str, Any] = dict(strategy.overrides)
    if strategy.policy is not None:
        update["policy"] = strategy.policy
    if threshold is not None:
        update["threshold"] = threshold
    elif strategy.policy == "rmse-threshold" and base.drift.threshold is None:
        update["threshold"] = 1.0  # placeholder so the settings validate; the replay passes the real one
    drift = DriftSettings.model_validate({**base.drift.model_dump(), **update})
    return base.model_copy(update={"drift": drift})


def build_strategy_engine(
    strategy: Strategy, settings: Settings, *, threshold: float, river_input: str = "abs"
) -> Engine:
    """The live edge's engine for ``strategy``; only the guard differs between strategies."""
    s = strategy_settings(strategy, settings, threshold=threshold)
    engine = build_engine(s, auto_train=False)
    gap = s.model.retrain_min_samples
    window = s.drift.window
    if strategy.family != "policy":
        engine.refresh_every = None  # a scheduled refresh is part of edgeloop's policy, not of these
    if strategy.family == "baseline":
        engine.guard_factory = lambda _ref: _unguarded(NeverDetector(window), 0)
        # Pure baselines: no floor and no consolidation either (they never see an alarm anyway).
        engine.floor_margin = engine.consolidate_after = None
    elif strategy.family == "original":
        engine.guard_factory = lambda ref: _unguarded(RmseThreshold(threshold, window, ref), gap)
    elif strategy.family == "reference":
        kind = "adwin" if strategy.name == "river-adwin" else "page-hinkley"
        engine.guard_factory = lambda _ref: _unguarded(RiverReference(kind, window, river_input), gap)
    return engine


def _unguarded(detector: Any, gap: int) -> DriftGuard:
    return DriftGuard(detector, warmup=0, min_gap=gap, budget=_NO_BUDGET, budget_window=100)


class _ErrorWindow:
    """Rolling RMSE bookkeeping shared by the evaluation-only detectors (for status and plots)."""

    name = "window"

    def __init__(self, window: int) -> None:
        self._rolling = RollingRmse(window)

    def reset(self) -> None:
        self._rolling.reset()

    def rebase(self, reference_rmse: float | None) -> None:
        self.reset()

    @property
    def rolling_rmse(self) -> float | None:
        return self._rolling.value

    @property
    def threshold(self) -> float | None:
        return None

    @property
    def reference_rmse(self) -> float | None:
        return None

    @property
    def calibrated(self) -> bool:
        return False

    def state(self) -> dict[str, Any]:
        return {"policy": self.name, "rolling_rmse": self.rolling_rmse}


class NeverDetector(_ErrorWindow):
    """Never alarms: the guard of strategies that do not retrain on drift.

    >>> NeverDetector(10).update(1e9)
    False
    """

    name = "never"

    def update(self, error: float) -> bool:
        if math.isfinite(error):
            self._rolling.add(error)
        return False


class RiverReference(_ErrorWindow):
    """A River detector with its library defaults on the raw error stream (``abs``: ``|e|``; ``raw``: ``e``).

    Any detected change alarms, as River reports it (ADWIN and Page-Hinkley in mode "both" also flag
    a drop). A new model resets it, as any integration would.

    >>> det = RiverReference("page-hinkley", 100)
    >>> any(det.update(1.0) for _ in range(200)), any(det.update(50.0) for _ in range(100))
    (False, True)
    """

    def __init__(self, kind: str, window: int, feed: str = "abs") -> None:
        if kind not in ("adwin", "page-hinkley"):
            raise ValueError(f"unknown River detector {kind!r}")
        if feed not in ("abs", "raw"):
            raise ValueError(f"feed must be abs or raw, got {feed!r}")
        super().__init__(window)
        self.kind = kind
        self.name = f"river-{kind}"
        self.feed = feed
        self.detections = 0
        self._new()

    def _new(self) -> None:
        self._det: Any = river_drift.ADWIN() if self.kind == "adwin" else river_drift.PageHinkley()

    def update(self, error: float) -> bool:
        if not math.isfinite(error):
            return False
        self._rolling.add(error)
        self._det.update(abs(error) if self.feed == "abs" else error)
        if self._det.drift_detected:
            self.detections += 1
            return True
        return False

    def reset(self) -> None:
        super().reset()
        self._new()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "detections": self.detections, "feed": self.feed}
