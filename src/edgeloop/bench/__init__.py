"""``edgeloop bench``: the live edge measured end to end through a real broker.

The modules, in the order a run uses them: :mod:`~edgeloop.bench.cli` (the command) builds
:class:`~edgeloop.bench.run.Bench` (set-up, the phases per QoS level, tear-down), which drives the
load generator (:mod:`~edgeloop.bench.loadgen`) and the measuring subscriber
(:mod:`~edgeloop.bench.lean`) in processes of their own (:mod:`~edgeloop.bench.workers`) and the edge
as a separate process (:mod:`~edgeloop.bench.edge`); :mod:`~edgeloop.bench.phases` holds the measured
windows, :mod:`~edgeloop.bench.usage` samples CPU and memory, :mod:`~edgeloop.bench.analysis` turns
send and receive times into loss, latency and the targets, and :mod:`~edgeloop.bench.report` prints them.
:mod:`~edgeloop.bench.instrument` (``python -m edgeloop.bench.instrument``) measures what the measuring
subscriber costs per message against maintained MQTT clients.
"""

from edgeloop.errors import EdgeloopError

__all__ = ["BenchError"]


class BenchError(EdgeloopError):
    """The bench could not run (a process died, the edge never answered, ...)."""
