"""``nats_pull.pull`` ends when its task is cancelled, whenever the cancellation lands.

The bench's do-nothing durable consumer stops its pull loop by cancelling it (its ``running()`` is
always true). On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited
event is set, so the loop went on after its task was cancelled: the consumer's ``close`` timed out and
its process exited with the loop's tasks pending ("Task was destroyed but it is pending!" in the middle
of ``edgeloop bench --broker nats``). A client that only records what ``pull`` sends stands in for
nats-py here: what is tested is the loop's own scheduling, not the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgeloop.adapters.nats_pull import pull

BATCH = 10


class _Sub:
    async def unsubscribe(self) -> None:
        return None


class _Msg:
    reply = "$JS.ACK.s.c.1"
    headers = None


class _Client:
    """What ``pull`` uses of a nats-py client: an inbox, a callback subscription, publish."""

    def __init__(self) -> None:
        self.deliver: Any = None
        self.requests = 0

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any, **_limits: Any) -> _Sub:
        self.deliver = cb
        return _Sub()

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests += 1


async def _cancel_after_delivery(steps: int) -> bool:
    """Cancel the pull ``steps`` loop turns after a delivery set its event; True when the task ended."""
    nc = _Client()

    async def room() -> int:
        return BATCH

    task = asyncio.create_task(
        pull(
            nc,
            stream="s",
            consumer="c",
            room=room,
            on_message=lambda _msg: None,
            release=lambda _n: None,
            running=lambda: True,
            wait=30.0,
            batch=BATCH,
        )
    )
    while nc.requests == 0:
        await asyncio.sleep(0)
    for _ in range(3):  # the loop now waits for its credit to run low
        await asyncio.sleep(0)
    for _ in range(BATCH // 2 + 1):  # credit below half a batch: the event is set
        await nc.deliver(_Msg())
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if not done:
        task.cancel()  # once more, so the test itself does not leave it running
        await asyncio.wait({task}, timeout=2.0)
    return bool(done)


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_a_cancelled_pull_ends_even_as_a_delivery_wakes_it(steps: int) -> None:
    assert asyncio.run(_cancel_after_delivery(steps))
