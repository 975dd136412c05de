"""``edgeloop demo``: the whole loop on one machine with nothing to install.

Broker: the configured one if it answers, else a private ``mosquitto`` on a free port, else an
embedded amqtt broker. Then the simulator (with a scheduled regime change on one device), the edge
with its retrain worker, and optionally the dashboard; a live status until ``--duration`` or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from edgeloop.adapters.broker import broker_answers, start_broker
from edgeloop.config import Settings
from edgeloop.service.edge import EdgeService
from edgeloop.service.publisher import SimulatorPublisher
from edgeloop.telemetry.simulator import DriftSpec, Simulator

log = logging.getLogger(__name__)

DEMO_MARKER = ".edgeloop-demo"


@contextmanager
def broker_for(settings: Settings, console: Console) -> Iterator[tuple[Settings, str]]:
    """Yield settings pointing at a broker that answers, and the MQTT protocol to speak.

    A broker the user configured (config file, ``EDGELOOP_BROKER_URL`` or ``--broker``) is used if it
    answers; otherwise the demo runs its own, so leftovers on a machine's shared broker cannot meet it.
    """
    configured = "url" in settings.broker.model_fields_set
    if configured and broker_answers(settings.broker.host, settings.broker.port):
        console.print(f"broker: using {settings.broker.url}")
        yield settings, "5"
        return
    broker = start_broker()
    with broker:
        protocol = getattr(broker, "protocol", "5")
        kind = "embedded amqtt (MQTT 3.1.1)" if protocol != "5" else "private mosquitto"
        why = f"nothing answers at {settings.broker.url}" if configured else "no broker configured"
        console.print(f"broker: {why}; started {kind} at {broker.url}")
        merged = settings.model_dump()
        merged["broker"]["url"] = broker.url
        merged["broker"]["username"] = None
        merged["broker"]["password"] = None
        merged["broker"]["password_file"] = None
        yield Settings.model_validate(merged), protocol


def prepare_data_dir(path: Path, console: Console) -> None:
    """Start each demo from an empty folder, but never delete a folder the demo did not make."""
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            raise SystemExit(
                f"{path} holds data that is not from a demo; pass --data-dir with an empty or new folder"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / DEMO_MARKER).write_text("made by edgeloop demo; the next demo run empties this folder\n")
    console.print(f"data: {path} (store, models, MLflow; left in place for inspection)")


def first_model_training(edge: EdgeService) -> Callable[[], bool]:
    """True while the edge trains its first model: the simulated world waits for it.

    The demo packs a simulated minute into a hundredth of a second, so the few seconds a training
    takes would be hours of readings, which at one reading a minute they are not; on a busy machine
    the first model would arrive after the scheduled regime change. Later retrains run while the
    stream flows, as on a real site.
    """
    engine = edge.engine
    return lambda: not engine.serving and bool(engine.pending)


def _interrupt(_signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not cut the clean-up short
    raise KeyboardInterrupt


def status_view(edge: EdgeService, elapsed: float, rate: float, drift: DriftSpec | None) -> Group:
    summary = edge.engine.summary()
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[b]t={elapsed:5.0f}s[/b]",
        f"{rate:7.0f} msg/s",
        f"{len({d for d, _ in edge.engine.tracks})} devices",
        f"{edge.stats.processed} processed",
        f"{sum(edge.stats.dropped.values())} dropped",
        f"{edge.stats.swaps} swaps",
    )
    targets = Table(title="forecast RMSE since each device's current model took over", title_justify="left")
    for col in ("target", "model", "persistence", "mean", "serving"):
        targets.add_column(col)
    for target, row in summary.items():
        m_rmse, p_rmse, a_rmse = (
            float(row[k] or 0.0) for k in ("model_rmse", "persistence_rmse", "mean_rmse")
        )
        better = m_rmse < min(p_rmse, a_rmse)
        mark = "[green]" if better else "[yellow]"
        targets.add_row(
            target,
            f"{mark}{row['model_rmse']:.3g}",
            f"{row['persistence_rmse']:.3g}",
            f"{row['mean_rmse']:.3g}",
            str(row["models"]),
        )
    devices = Table(title="devices", title_justify="left")
    for col in ("device", "target", "status", "model", "rmse", "persistence"):
        devices.add_column(col)
    for (device, target), t in sorted(edge.engine.tracks.items())[:12]:
        rmse, pers = t.model_rmse.value, t.persist_rmse.value
        note = (
            " <- drift scheduled"
            if drift is not None and drift.device == device and drift.target == target
            else ""
        )
        devices.add_row(
            device + note,
            target,
            t.status,
            t.last_model,
            f"{rmse:.3g}" if rmse is not None else "-",
            f"{pers:.3g}" if pers is not None else "-",
        )
    events = Table(title="latest events", title_justify="left")
    for col in ("kind", "scope", "reason"):
        events.add_column(col)
    for event in list(edge.stats.events)[-6:]:
        events.add_row(event.kind, event.scope, event.reason[:90])
    return Group(head, targets, devices, events)


def plain_status(edge: EdgeService, elapsed: float, rate: float) -> str:
    parts = [f"t={elapsed:.0f}s", f"{rate:.0f} msg/s", f"processed={edge.stats.processed}"]
    for target, row in edge.engine.summary().items():
        parts.append(
            f"{target}: model={row['model_rmse']:.3g} persistence={row['persistence_rmse']:.3g} "
            f"mean={row['mean_rmse']:.3g} [{row['models']}]"
        )
    statuses = sorted({t.status for t in edge.engine.tracks.values()})
    parts.append(f"status={','.join(statuses)}")
    return "  ".join(parts)


def run_demo(
    settings: Settings,
    *,
    duration: float | None,
    devices: int,
    rate: float,
    seed: int,
    drift: DriftSpec | None,
    dashboard: bool,
    dashboard_port: int,
    config_path: Path | None,
) -> dict[str, Any]:
    console = Console()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, a service manager) ends the demo as Ctrl-C does: what it started stops too.
        signal.signal(signal.SIGTERM, _interrupt)
    prepare_data_dir(settings.data_dir, console)
    # Never ahead of the edge's clock, however long the demo runs (see Simulator's clock).
    simulator = Simulator(devices, seed=seed, drifts=[drift] if drift else [], clock=time.time)
    with broker_for(settings, console) as (live_settings, protocol):
        edge = EdgeService(live_settings, protocol=protocol)
        publisher: SimulatorPublisher | None = None
        dash = None
        try:  # from here on, Ctrl-C or SIGTERM at any moment stops what was started
            edge.start()
            if not edge.ready.wait(30):
                raise SystemExit("the edge did not connect to the broker within 30 s")
            publisher = SimulatorPublisher(
                live_settings, simulator, rate=rate, protocol=protocol, hold=first_model_training(edge)
            ).start()
            if dashboard:
                dash = _start_dashboard(live_settings, dashboard_port, config_path, console)
            if drift is not None:
                console.print(
                    f"scenario: {devices} devices, {rate:g} readings/s each; {drift.kind} on {drift.device} "
                    f"({drift.target}) at reading {drift.at} (~{drift.at / rate:.0f} s)"
                )
            _show_status(edge, duration, drift, console)
        except KeyboardInterrupt:
            console.print("stopping (Ctrl-C or SIGTERM)")
        finally:
            if publisher is not None:
                publisher.stop()
                time.sleep(0.5)  # let in-flight readings reach the edge
            edge.stop()
            if dash is not None:
                dash.terminate()
        return _report(edge, publisher, console, settings.data_dir)


def _show_status(
    edge: EdgeService, duration: float | None, drift: DriftSpec | None, console: Console
) -> None:
    """A live table in a terminal, a status line every 10 s otherwise, until ``duration`` is over."""
    started = time.monotonic()
    last_count, last_time = 0, started
    rate_now = 0.0
    interactive = sys.stdout.isatty()
    with (
        Live(console=console, refresh_per_second=2, transient=False)
        if interactive
        else _nullcontext() as live
    ):
        next_plain = started
        while duration is None or time.monotonic() - started < duration:
            time.sleep(0.5)
            now = time.monotonic()
            if now - last_time >= 1.0:
                rate_now = (edge.stats.processed - last_count) / (now - last_time)
                last_count, last_time = edge.stats.processed, now
            if live is not None:
                live.update(status_view(edge, now - started, rate_now, drift))
            elif now >= next_plain:
                print(plain_status(edge, now - started, rate_now), flush=True)
                next_plain = now + 10


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _start_dashboard(settings: Settings, port: int, config_path: Path | None, console: Console) -> Any:
    try:
        from edgeloop.dashboard.launch import run_dashboard
    except ImportError:  # pragma: no cover - the dashboard ships with the package
        console.print("dashboard: not available")
        return None
    env = {
        **os.environ,
        "EDGELOOP_DATA_DIR": str(settings.data_dir.resolve()),
        "EDGELOOP_BROKER_URL": settings.broker.url,
        "EDGELOOP_SITE": settings.site,
    }
    proc = run_dashboard(config_path, port=port, env=env, log_file=settings.data_dir / "dashboard.log")
    console.print(f"dashboard: http://127.0.0.1:{port}")
    return proc


def _report(
    edge: EdgeService, publisher: SimulatorPublisher | None, console: Console, data_dir: Path
) -> dict[str, Any]:
    summary = edge.engine.summary()
    kinds: dict[str, int] = {}
    for event in edge.stats.events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    report = {
        "published": publisher.published if publisher is not None else 0,
        "held_s": round(publisher.held, 1) if publisher is not None else 0.0,
        "processed": edge.stats.processed,
        "predictions": edge.stats.predictions,
        "dropped": dict(edge.stats.dropped),
        "targets": summary,
        "events": kinds,
        "devices": {f"{d}/{t}": tr.last_model for (d, t), tr in sorted(edge.engine.tracks.items())},
        "data_dir": str(data_dir),
    }
    console.print(
        f"published {report['published']}, answered {report['predictions']}, dropped {report['dropped']}"
        f" (the simulator held {report['held_s']:g} s while the first model trained)"
    )
    for target, row in summary.items():
        console.print(
            f"{target}: model RMSE {row['model_rmse']:.4g} vs persistence {row['persistence_rmse']:.4g} "
            f"vs mean {row['mean_rmse']:.4g} (serving {row['models']})"
        )
    console.print(f"events: {kinds}")
    console.print(f"data left in {data_dir}: `edgeloop models list`, `edgeloop mlflow`, `edgeloop dashboard`")
    return report
