"""NATS connection and the idempotent set-up of streams, consumers and KV.

Every role calls ``ensure_bus`` at start-up; creating what exists is a no-op,
so roles can start in any order. Settings mirror the intent: the delivery
stream is a work queue (a job leaves it when acked), results are kept until
qmgr acks them, and ``Nats-Msg-Id`` de-duplicates repeats within the window.
"""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from postfleet.core.bus import subjects
from postfleet.core.workcounts import watch_bus_client

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0


async def connect(url: str, name: str, **kwargs: Any) -> Client:
    """Connect with endless reconnects: a restarted NATS must not kill a role."""
    client = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        **kwargs,
    )
    watch_bus_client(client)  # bus messages per message, on /metrics
    return client


# Work queues, both: a message leaves its stream when it is acked.
WORK_QUEUES = (
    (subjects.DELIVERY_STREAM, subjects.DELIVERY_SUBJECTS),
    (subjects.RESULTS_STREAM, subjects.RESULTS_SUBJECT),
)


async def ensure_streams(js: JetStreamContext) -> None:
    for name, subject in WORK_QUEUES:
        await _ensure_stream(js, StreamConfig(
            name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
        ))


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with a different configuration: bring it to ours.
        await js.update_stream(config)


async def ensure_consumer(
    js: JetStreamContext, stream: str, durable: str, subject: str, ack_wait_s: float
) -> None:
    """Create a durable pull consumer (idempotent)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=subject,
        ack_wait=ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
    )
    try:
        await js.add_consumer(stream, config)
    except BadRequestError:
        log.debug("consumer %s exists with other settings; keeping it", durable)


async def routing_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(subjects.ROUTING_BUCKET)
    except BucketNotFoundError:
        from nats.js.api import KeyValueConfig

        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.ROUTING_BUCKET, history=5)
        )


async def ensure_bus(nc: Client) -> JetStreamContext:
    """Streams and the routing bucket exist after this returns."""
    js = nc.jetstream()
    await ensure_streams(js)
    await routing_bucket(js)
    return js


async def close(nc: Client, timeout: int = 2) -> None:
    """Flush what was published, then close. Not ``drain()``: a role closes
    only after its work is done, and drain waits out pending pull requests
    (up to its 30 s timeout) for nothing."""
    try:
        await nc.flush(timeout=timeout)
    except Exception as exc:
        log.debug("flush before close failed: %s", exc)
    try:
        await nc.close()
    except Exception as exc:
        log.debug("close failed: %s", exc)
