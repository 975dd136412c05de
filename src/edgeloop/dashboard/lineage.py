"""Each model version's standing now: champion, retired, rolled back or rejected, from the record.

The stored ``decision`` says what was decided when a version was trained; what happened since is
elsewhere: the champion pointer in the models folder (``champion.json``, written by every path that
promotes or rolls back: the loop, ``edgeloop train``, ``edgeloop models``) and the ``events`` table
(``model_promoted``, ``model_rejected``, ``model_rolled_back``). This module joins the three:

- **champion**: the version the scope's pointer names (without a readable pointer: the version the
  newest promotion or rollback event left serving);
- **rolled back**: dropped by a rollback (an event's ``previous_version``, or the stored decision);
- **rejected**: lost its evaluation;
- **retired**: was champion once and is no longer.

``parent`` is the champion a version was measured against (the event's ``previous_version``), and
``devices`` the devices whose status rows say they are served by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from edgeloop.adapters.store import StoreConnection
from edgeloop.errors import ModelFileError
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.pointer import ChampionPointer, read_journal, read_pointer

LINEAGE_KINDS = ("model_promoted", "model_rejected", "model_rolled_back")
EVENTS_SQL = (
    "SELECT ts, kind, scope, version, previous_version FROM events WHERE scope IN ({scopes})"
    " AND kind IN ({kinds})".replace("{kinds}", ", ".join(f"'{k}'" for k in LINEAGE_KINDS))
)
SERVING_SQL = "SELECT model, device FROM scope_status WHERE target = ? ORDER BY device"


def pointers(models_dir: Path, scopes: Iterable[str]) -> dict[str, ChampionPointer | None]:
    """Each scope's champion pointer, read without the registry's lock (a reader never writes); a torn
    or unreadable pointer falls back to the journal's last good line; absent scopes are left out."""
    registry = LocalRegistry(models_dir)
    out: dict[str, ChampionPointer | None] = {}
    for scope in scopes:
        with contextlib.suppress(OSError, ValueError):
            folder = registry.scope_dir(scope)
            if not folder.is_dir():
                continue
            try:
                out[scope] = read_pointer(folder)
            except ModelFileError:
                out[scope] = read_journal(folder)
    return out


def lineage_events(conn: StoreConnection, scopes: Iterable[str]) -> pd.DataFrame:
    """Promotions, rejections and rollbacks of ``scopes``, oldest first (``events_scope_ts``, one
    query per 500 scopes)."""
    names = list(scopes)
    rows = []
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        rows += conn.execute(EVENTS_SQL.format(scopes=", ".join("?" * len(chunk))), chunk).fetchall()
    df = pd.DataFrame(rows, columns=["ts", "kind", "scope", "version", "previous_version"])
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def serving(conn: StoreConnection, target: str) -> dict[str, list[str]]:
    """Devices per serving version label, from the status rows."""
    out: dict[str, list[str]] = {}
    for model, device in conn.execute(SERVING_SQL, (target,)):
        if model:
            out.setdefault(model, []).append(device)
    return out


def _event_champions(events: pd.DataFrame) -> dict[str, str | None]:
    """Per scope, the label its newest promotion or rollback left serving (None: none of its own)."""
    moves = events[events["kind"].isin(["model_promoted", "model_rolled_back"])]
    out: dict[str, str | None] = {}
    for scope, version in zip(moves["scope"], moves["version"], strict=True):  # oldest first
        out[scope] = version if isinstance(version, str) and version else None
    return out


def lineage(
    versions: pd.DataFrame,
    pointer_of: Mapping[str, ChampionPointer | None],
    events: pd.DataFrame,
    served: Mapping[str, list[str]],
) -> pd.DataFrame:
    """``versions`` (rows of :func:`queries.model_versions`) with ``standing``, ``parent``,
    ``devices`` (a short text) and ``n_devices``."""
    rolled = set(events.loc[events["kind"] == "model_rolled_back", "previous_version"].dropna())
    rejected = set(events.loc[events["kind"] == "model_rejected", "version"].dropna())
    promoted = set(events.loc[events["kind"] == "model_promoted", "version"].dropna())
    judged = events[events["kind"].isin(["model_promoted", "model_rejected"])]
    parent = dict(zip(judged["version"], judged["previous_version"], strict=True))
    champions = _event_champions(events)
    for scope, pointer in pointer_of.items():  # the pointer, where readable, is the authority
        champions[scope] = (
            f"{scope}:v{pointer.version}" if pointer is not None and pointer.version is not None else None
        )
    ever_champion = {f"{scope}:v{v}" for scope, p in pointer_of.items() if p is not None for v in p.history}

    def standing(scope: str, label: str, decision: str | None) -> str:
        if champions.get(scope) == label:
            return "champion"
        if label in rolled or decision == "rolled_back":
            return "rolled_back"
        if label in rejected or decision == "rejected":
            return "rejected"
        if label in promoted or label in ever_champion or decision in ("champion", "promoted", "retired"):
            return "retired"
        return decision or "trained"

    out = versions.copy()
    out["standing"] = [
        standing(s, lb, d) for s, lb, d in zip(out["scope"], out["label"], out["decision"], strict=True)
    ]
    out["parent"] = [parent.get(lb) or None for lb in out["label"]]
    out["n_devices"] = [len(served.get(lb, [])) for lb in out["label"]]
    out["devices"] = [_short(served.get(lb, [])) for lb in out["label"]]
    return out


def _short(devices: list[str], shown: int = 3) -> str:
    """>>> _short(["a", "b", "c", "d", "e"])
    'a, b, c +2'
    """
    more = f" +{len(devices) - shown}" if len(devices) > shown else ""
    return ", ".join(devices[:shown]) + more
