"""edgeloop's live dashboard, a Streamlit script: ``streamlit run app.py -- --config FILE``.

It only reads the store (read-only SQLite, every query in :mod:`edgeloop.dashboard.queries`). Four
views sit in tabs that run lazily (only the open tab queries) and refresh themselves as fragments
every few seconds; there is no polling loop. The open tab and device are in the URL
(``?view=Device&device=dev-001``), so a view can be bookmarked or shared.

Settings come from ``--config`` and ``EDGELOOP_*`` like every edgeloop process. Dashboard-only knobs
have no key in :class:`Settings`, so they are environment variables (or flags after ``--``):

``EDGELOOP_DASHBOARD_REFRESH``       seconds between refreshes (default: 2 x ``edge.status_interval``, >= 1)
``EDGELOOP_DASHBOARD_SILENT_AFTER``  fewest wall seconds before a device is silent (3 x status_interval, >= 5)
``EDGELOOP_DASHBOARD_SILENT_INTERVALS`` silent after this many of the device's own reporting intervals (3)
``EDGELOOP_DASHBOARD_POINTS``        readings in the device chart (500)
``EDGELOOP_DASHBOARD_MLFLOW_URL``    MLflow UI base URL for run links (http://127.0.0.1:5000)
``EDGELOOP_DASHBOARD_AUTH_FILE``     file whose first line is the login token or password (required
                                     when bound beyond loopback; see :mod:`edgeloop.dashboard.access`)
``EDGELOOP_DASHBOARD_LOGIN_BY_PROXY`` "true": a proxy or a loopback-only port in front does the login
"""

from __future__ import annotations

import os
import sys

import streamlit as st

from edgeloop.adapters.store import STORE_READ_ERRORS, describe
from edgeloop.config import load_settings
from edgeloop.dashboard import queries as q
from edgeloop.dashboard.access import login_by_proxy, login_gate, page_icon, redact_url
from edgeloop.dashboard.common import Context, guarded, parse_options, store
from edgeloop.dashboard.device import device_view
from edgeloop.dashboard.events import events_view
from edgeloop.dashboard.fleet import fleet_view
from edgeloop.dashboard.models import models_view
from edgeloop.errors import ConfigError

VIEWS = ("Fleet", "Device", "Models", "Events")


# -- page ----------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="edgeloop", page_icon=page_icon(), layout="wide")
    try:
        settings = load_settings(parse_options(sys.argv[1:], os.environ).config)
        options = parse_options(sys.argv[1:], os.environ, settings)
    except ConfigError as exc:
        st.error(f"**Invalid configuration**\n\n```\n{exc}\n```")
        st.stop()
    login_gate(options.auth_file, by_proxy=login_by_proxy(os.environ))

    with st.sidebar:
        st.header(":material/sensors: edgeloop")
        try:
            with store(settings, quiet=True) as conn:
                known = q.targets(conn) if conn is not None else []
        except STORE_READ_ERRORS:
            known = []  # the open view reports it
        choices = list(dict.fromkeys([*settings.model.targets, *known]))
        target = st.selectbox("Target", choices, key="target", bind="query-params") or choices[0]
        live = st.toggle("Live refresh", value=True, key="live", help=f"every {options.refresh:g} s")
        st.divider()
        st.caption(
            f"**Site** {settings.site}  \n**Broker** {redact_url(settings.broker.url)}  \n"
            f"**Store** `{describe(settings.store_location)}`  \n**Drift** {settings.drift.policy}, window "
            f"{settings.drift.window}  \n**First training after** {settings.model.min_train_samples} samples"
        )

    st.title(f"edgeloop · {settings.site}")
    ctx = Context(settings=settings, options=options, target=target)
    run_every = options.refresh if live else None
    tabs = st.tabs(list(VIEWS), key="view", on_change="rerun", bind="query-params")
    views = (fleet_view, device_view, models_view, events_view)
    for tab, view in zip(tabs, views, strict=True):
        with tab:
            # Only the open tab runs its queries; it then refreshes alone, as a fragment.
            if tab.open:
                st.fragment(guarded(view), run_every=run_every)(ctx)


# Streamlit runs this file as __main__; importing it only defines main().
if __name__ == "__main__":
    main()
