"""How a pool of ``edgeloop trainer`` processes shares retrain requests so that each is trained once.

How:

- Requests are handed out one by one (the shared subscription) and acknowledged only once answered.
  By default a trainer's session ends with its connection (``retrain.trainer_session_expiry: 0``):
  Mosquitto keeps handing shared-subscription messages to the persistent session of a member that is
  gone, so a dead trainer with a persistent session would swallow its share of the requests until it
  came back. A request a killed trainer held is sent again by its edge after ``retrain.timeout``
  (:mod:`edgeloop.lifecycle.retrains`), and reaches a live trainer.
- Every trainer announces itself on ``edgeloop/<site>/trainers/<client id>`` (retained JSON
  ``{"state": "online", "job": <request id or null>, "scope": ...}``; the broker publishes
  ``offline`` as its last will when the connection drops, kill -9 included) and listens to the
  events topic. A re-sent
  request whose answer any trainer already published is answered again from memory; one that a live
  trainer is still working on waits (unacknowledged) for that trainer's answer, and is trained only if
  that trainer goes offline first. So a slow training that outlived the edge's timeout is not trained
  a second time, and a dead trainer's request is.
- One scope is trained by one trainer at a time (a request for a scope another trainer is training
  waits for it), so the next training compares against the champion just made and numbers its
  version after it, whichever trainer takes it (with ``distribution.mode: bus`` every trainer installs
  the champions the others publish). A claim is first when no other claim reached the trainer before
  the broker echoed its own (the broker forwards presence messages in the order it got them).
- A request no newer than a finished training of its scope (by any trainer: every verdict says the
  newest reading it saw) is answered from that training, not trained again
  (:mod:`edgeloop.retrain.reuse`): two edges asking for the fleet model get one training.

:class:`TrainerPool` holds that part of :class:`~edgeloop.retrain.service.TrainerService`: presence,
claims, the verdicts other trainers published, and the requests parked while another trainer works on
them. The service answers the requests it takes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from edgeloop.adapters.mqtt import MqttSession
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.retrain.dispatch import request_from_json
from edgeloop.retrain.reuse import FinishedTrainings, verdict

log = logging.getLogger(__name__)

ANSWERS_KEPT = 256  # request ids whose answer is repeated, not retrained, when they come again
PUBLISH_WAIT = 5.0  # seconds to wait for the answer to leave before the request is acknowledged
PRESENCE_TOPIC = "edgeloop/{site}/trainers"
FINAL_KINDS = ("model_promoted", "model_rejected", "retrain_finished")  # a verdict: the request is done


def presence_topic(site: str, client_id: str | None = None) -> str:
    """``edgeloop/<site>/trainers`` and, with a client id, one trainer's retained presence topic."""
    root = PRESENCE_TOPIC.format(site=site)
    if client_id is None:
        return root
    return f"{root}/{re.sub(r'[^A-Za-z0-9_.@-]', '_', client_id)}"


@dataclass
class _Parked:
    """A request another live trainer is working on: answered when its verdict arrives."""

    message: Any
    attempt: Attempt
    holder: str
    job: str | None  # the request id the holder was training when this one came


class TrainerPool:
    """The pool side of a trainer (a base of :class:`~edgeloop.retrain.service.TrainerService`).

    The state is set up by the service's constructor; what the pool uses of it is declared here.
    """

    client_id: str
    session: MqttSession
    handled: Counter[str]
    _requests: queue.SimpleQueue[Any]
    _request_topic: str
    _presence_root: str
    _presence_topic: str
    _models_prefix: str
    _answers: OrderedDict[str, list[dict[str, Any]]]
    _live: dict[str, tuple[str | None, str | None]]
    _claimed: str | None
    _echo: str | None
    _parked: list[_Parked]
    _finished: FinishedTrainings
    _announced: int
    _answer: Callable[..., None]
    _receive_model: Callable[[str, bytes], None]

    def _presence(self, state: str, job: str | None = None, scope: str | None = None) -> bytes:
        self._echo = uuid.uuid4().hex
        return orjson.dumps(
            {
                "state": state,
                "job": job,
                "scope": scope,
                "trainer": self.client_id,
                "ts": time.time(),
                "nonce": self._echo,
            }
        )

    def _announce(self, job: str | None, scope: str | None = None) -> None:
        payload = self._presence("online", job, scope)
        info = self.session.publish(self._presence_topic, payload, qos=1, retain=True)
        self._announced = self.session.connection
        self._claimed = job
        if job is not None:
            # Others must know we hold the request before it can reach them again.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(PUBLISH_WAIT)

    def _claim(self, attempt: Attempt) -> str | None:
        """Claim ``attempt`` for us; the presence topic of a trainer that claimed it (or its scope) first.

        Our claim is first if no other claim reached us before the broker sent ours back: the broker
        delivers every presence in the order it received them, so a trainer claiming later sees ours
        before its own and backs off. Two trainings of one scope at once would both number their
        version after the same champion.
        """
        self._announce(attempt.request_id, attempt.scope)
        deadline = time.monotonic() + PUBLISH_WAIT
        held: list[Any] = []
        while self._echo is not None and time.monotonic() < deadline:
            try:
                message = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            if message.topic == self._request_topic:
                held.append(message)  # taken in turn after this one
            else:
                self._observe(message)
                self._ack(message)
        for message in held:
            self._requests.put(message)
        holder = self._holder(attempt)
        if holder is not None:
            self._announce(None)
        return holder

    def _ack(self, message: Any) -> None:
        if message.qos > 0:
            with contextlib.suppress(Exception):
                self.session.client.ack(message.mid, message.qos)

    def _observe(self, message: Any) -> None:
        """Another trainer's presence, or an event: remember who works on what, and every verdict."""
        topic = str(message.topic)
        if topic.startswith(self._models_prefix):
            self._receive_model(topic, bytes(message.payload))
            return
        try:
            data = orjson.loads(message.payload) if message.payload else {}
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        if topic.startswith(self._presence_root + "/"):
            if topic == self._presence_topic:
                if data.get("nonce") == self._echo:
                    self._echo = None
                return
            if data.get("state") == "online":
                job, scope = data.get("job"), data.get("scope")
                self._live[topic] = (
                    job if isinstance(job, str) else None,
                    scope if isinstance(scope, str) else None,
                )
            else:
                self._live.pop(topic, None)
            return
        self._finished.note(data)
        rid = data.get("request_id")
        if (
            isinstance(rid, str)
            and rid
            and data.get("kind") in FINAL_KINDS
            and not (data.get("kind") == "retrain_finished" and data.get("metrics"))
        ):
            # A verdict (a retrain_finished with metrics is followed by the promoted/rejected one).
            answers = self._answers.setdefault(rid, [])
            if data not in answers:
                answers.append(data)
            self._answers.move_to_end(rid)
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)

    def _holds(self, holder: str, attempt: Attempt) -> bool:
        job, scope = self._live.get(holder, (None, None))
        return (bool(attempt.request_id) and job == attempt.request_id) or (
            job is not None and scope == attempt.scope
        )

    def _holder(self, attempt: Attempt) -> str | None:
        """The presence topic of another live trainer working on ``attempt`` or on its scope, if any."""
        for topic in self._live:
            if self._holds(topic, attempt):
                return topic
        return None

    def _take(self, message: Any) -> None:
        try:
            attempt = request_from_json(bytes(message.payload))
        except ValueError:
            self._answer(message)  # refused, with the reason
            return
        if attempt.request_id not in self._answers:
            holder = self._holder(attempt) or self._claim(attempt)
            if holder is not None:
                same = self._live.get(holder, (None, None))[0] == attempt.request_id
                log.info(
                    "request %s (%s): %s is being trained by %s; waiting for it",
                    attempt.request_id,
                    attempt.scope,
                    "it" if same else "its scope",
                    holder.rsplit("/", 1)[-1],
                )
                self.handled["waited"] += 1
                job = self._live.get(holder, (None, None))[0]
                self._parked.append(_Parked(message, attempt, holder, job))
                return
        self._answer(message)

    def _unpark(self) -> None:
        for parked in list(self._parked):
            if self._holds(parked.holder, parked.attempt) and parked.attempt.request_id not in self._answers:
                continue
            # Answered (repeated from memory), its holder done with the scope, or gone: ours now.
            self._parked.remove(parked)
            during = None
            for event in self._answers.get(parked.job or "", []):
                during = during or verdict(event, parked.attempt.scope)
            self._answer(parked.message, during=during)
