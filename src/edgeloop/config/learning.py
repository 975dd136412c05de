"""What is learnt and when it is questioned: ``model.*`` (targets, candidates, training window, promotion,
probation, the persistence floor) and ``drift.*`` (the drift policy and its guard).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from edgeloop.config.section import _Section
from edgeloop.config.span import Span


class ModelSettings(_Section):
    targets: list[str] = Field(["voc_ppb"], min_length=1, description="Fields to forecast")
    lags: int = Field(5, ge=1, le=64, description="Number of past readings a forecast sees")
    candidates: list[Literal["persistence", "linear", "lgbm-level", "lgbm-delta", "rls", "lgbm-rls"]] = Field(
        ["persistence", "linear", "lgbm-delta", "rls"],
        description="Formulations tried at training (rls and lgbm-rls keep learning per device after every "
        "reading; lgbm-rls is opt-in: up to 3.3 % more accurate on the public series, costing a quarter "
        "of the engine's readings/s and 4-8 % of the edge's sustained rate; lgbm-level loses badly once a "
        "sensor leaves the range it was trained on)",
    )
    min_train_samples: int = Field(
        1440, ge=50, description="Readings of a target (all devices) before its first fleet model is trained"
    )
    retrain_min_samples: int = Field(
        200,
        ge=20,
        description="Readings a drifted device collects after the alarm before its first (fast) retrain",
    )
    consolidate_after: str = Field(
        "1d",
        description="Span (e.g. 1d, 12h, or 2000 readings) after an alarm at which a consolidation "
        "retrain learns the whole new regime, and for which a device whose retrain kept its model starts "
        "no retrain on another alarm; 0: off",
    )
    refresh_every: str = Field(
        "36h",
        description="Span (e.g. 3d, or 5000 readings) between validated champion/challenger refreshes "
        "of a scope, never sooner than train_window/2 readings; 0: off",
    )
    train_window: int = Field(4000, ge=100, description="Most recent readings per device a training uses")
    validation_fraction: float = Field(0.25, gt=0.05, lt=0.6, description="Newest share held out to validate")
    min_validation_samples: int = Field(
        100,
        ge=10,
        description="Fewest newest readings per device held out to validate, whatever the fraction",
    )
    promotion_margin: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="A challenger must beat both the champion's and persistence's holdout RMSE by this share "
        "(the champion's by less when a holdout of 500+ readings shows the difference)",
    )
    probation_samples: int = Field(200, ge=10, description="Scored forecasts a new model serves on probation")
    probation_tolerance: float = Field(
        1.1,
        ge=1.0,
        description="Roll back if probation RMSE exceeds the old model's (or persistence's) RMSE times this",
    )
    floor_margin: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="Serve persistence for a device while its model's recent RMSE exceeds persistence's "
        "by this share",
    )
    floor_window: int = Field(
        300, ge=20, description="Scored forecasts (exponential window) over which the floor compares them"
    )
    floor_shrink: bool = Field(
        True,
        description="Serve the last reading plus the model's forecast change times its least-squares weight "
        "(0-1) against the actual changes over floor_window readings",
    )
    gap_intervals: float = Field(
        5.0,
        gt=1.0,
        description="A pause longer than this many median sampling intervals resets a device's lag window",
    )
    lgbm_rounds: int = Field(
        200,
        ge=10,
        description="Most LightGBM boosting rounds; early stopping on the last fifth of the training "
        "rows keeps as many as help there (20 at least)",
    )

    @field_validator("consolidate_after", "refresh_every", mode="before")
    @classmethod
    def _check_span(cls, value: Any) -> str:
        Span.parse(value)  # YAML gives 2000 as a number: kept as the text "2000" (readings)
        return str(value).strip()


class DriftSettings(_Section):
    policy: Literal["rmse-threshold", "relative", "page-hinkley", "adwin"] = Field(
        "page-hinkley", description="Drift policy on the forecast error stream"
    )
    window: int = Field(100, ge=10, description="Scored forecasts in the rolling RMSE")
    threshold: float | None = Field(None, gt=0, description="Absolute RMSE threshold (rmse-threshold policy)")
    relative_factor: float = Field(
        2.0, gt=1.0, description="relative: alarm when rolling RMSE > k x reference"
    )
    ph_threshold: float = Field(150.0, gt=0, description="page-hinkley: alarm threshold on normalised errors")
    ph_delta: float = Field(0.5, ge=0, description="page-hinkley: tolerated drift of normalised errors")
    adwin_delta: float = Field(0.002, gt=0, lt=1, description="adwin: confidence parameter")
    warmup: int = Field(100, ge=0, description="Scored forecasts ignored after a model change")
    calibration: int = Field(
        1440,
        ge=10,
        description="Live errors that set a new model's error scale; cover one cycle (a day at 1/min)",
    )
    min_gap: int = Field(500, ge=0, description="Samples between two alarms of one scope (hysteresis)")
    budget: int = Field(3, ge=1, description="At most this many retrains per scope per budget_window samples")
    budget_window: int = Field(10_000, ge=100, description="Samples over which the retrain budget applies")
