"""Reading a JetStream durable pull consumer without a task per message.

nats-py's ``PullSubscription.fetch`` waits for each message of a batch with ``next_msg``, which
creates a task, a ``wait_for`` and a uuid per message: in a py-spy profile of the edge at its
maximum, fetching cost more than answering the reading. :func:`pull` sends the same pull requests
(``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with ``batch`` and ``expires``) and receives the
messages on a callback subscription of a private inbox subject: one callback per message, no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors

log = logging.getLogger(__name__)

REQUEST_GRACE = 5.0  # seconds of silence past a request's expiry before the client writes it off
PENDING = "Nats-Pending-Messages"  # a 408 status's header: how many of the request's batch never came


async def pull(
    nc: Any,
    *,
    stream: str,
    consumer: str,
    room: Callable[[], Awaitable[int]],
    on_message: Callable[[Any], None],
    release: Callable[[int], None],
    running: Callable[[], bool],
    wait: float,
    batch: int,
) -> None:
    """While ``running()``: ask for more messages (``await room()`` of them, room the caller reserved)
    whenever less than half a ``batch`` is still to come, hand every delivered message to
    ``on_message`` in delivery order, and ``release`` the reserved room as messages fill it or
    requests expire. ``wait``: seconds a request waits on the server for messages not there yet.

    Credit, not request identity: every request's messages arrive on one subscription (one task,
    so in order), and the client counts what it asked for and has not received. A request that
    expires says in its 408 status how much of it never came; a request that was filled says
    nothing. The next request goes out while the last one still waits for the rest of its batch,
    so a consumer that received part of a batch never waits for its expiry while readings queue on
    the server (a closed loop with fewer readings in flight than a batch would stall there).
    """
    credit = 0  # messages asked for and neither delivered nor expired
    clock = asyncio.get_running_loop().time
    heard = clock()
    low = asyncio.Event()

    async def deliver(msg: Any) -> None:
        nonlocal credit, heard
        heard = clock()
        if not msg.reply:  # a status message: 408 (expired), 409 (consumer deleted, ...)
            headers = msg.headers or {}
            gone = min(credit, int(headers.get(PENDING) or 0)) if PENDING in headers else credit
            credit -= gone
            release(gone)
            low.set()
            return
        on_message(msg)
        if credit > 0:
            credit -= 1
            release(1)
            if credit < batch // 2:
                low.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=deliver, pending_msgs_limit=10**6, pending_bytes_limit=2**30)
    api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    expires = int(wait * 1e9)
    try:
        while running():
            if credit >= batch // 2:
                low.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(low.wait(), wait)
                if credit and clock() - heard > wait + REQUEST_GRACE:
                    release(credit)  # the server never answered (a request lost on a reconnect)
                    credit = 0
                continue
            want = await room()
            credit += want
            try:
                await nc.publish(api, b'{"batch":%d,"expires":%d}' % (want, expires), reply=inbox)
            except (nats.errors.Error, OSError) as exc:  # disconnected: the client's buffer is full
                log.debug("pull request on %s failed: %r", consumer, exc)
                credit -= want
                release(want)
                await asyncio.sleep(0.2)
    finally:
        release(credit)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
