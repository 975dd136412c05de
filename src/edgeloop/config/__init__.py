"""One typed settings tree: defaults < YAML file (``--config``) < environment (``EDGELOOP_...``).

Every key is declared once, with its type, default and a one-line doc. Nested keys map to
environment variables with a single underscore after the section name, e.g.
``broker.url`` is ``EDGELOOP_BROKER_URL`` and ``drift.policy`` is ``EDGELOOP_DRIFT_POLICY``.

The sections live in modules by concern: :mod:`~edgeloop.config.broker` (``broker.*``),
:mod:`~edgeloop.config.readings` (``topics.*``, ``mapping.*``, ``limits.*``),
:mod:`~edgeloop.config.learning` (``model.*``, ``drift.*``), :mod:`~edgeloop.config.edge`
(``store.*``, ``edge.*``, ``alerts.*``), :mod:`~edgeloop.config.training` (``retrain.*``,
``distribution.*``, ``mlflow.*``); the tree is :mod:`~edgeloop.config.settings`, loading it
:mod:`~edgeloop.config.loading`, and :mod:`~edgeloop.config.span` the time-or-readings spans.
Import them from here.

>>> s = Settings(site="lab")
>>> s.topics.telemetry_filters(s.site)
['edgeloop/lab/+/telemetry']
>>> s.broker.host, s.broker.port, s.broker.tls
('127.0.0.1', 1883, False)
"""

from __future__ import annotations

from edgeloop.config.broker import BrokerSettings
from edgeloop.config.edge import AlertSettings, EdgeSettings, StoreSettings
from edgeloop.config.learning import DriftSettings, ModelSettings
from edgeloop.config.loading import check_readable, load_settings
from edgeloop.config.readings import LimitSettings, MappingSettings, TopicSettings
from edgeloop.config.settings import SECRET_MASK, Settings
from edgeloop.config.span import Span
from edgeloop.config.training import DistributionSettings, MlflowSettings, RetrainSettings

__all__ = [
    "SECRET_MASK",
    "AlertSettings",
    "BrokerSettings",
    "DistributionSettings",
    "DriftSettings",
    "EdgeSettings",
    "LimitSettings",
    "MappingSettings",
    "MlflowSettings",
    "ModelSettings",
    "RetrainSettings",
    "Settings",
    "Span",
    "StoreSettings",
    "TopicSettings",
    "check_readable",
    "load_settings",
]
