"""A small Pulsar broker for tests: the binary protocol over asyncio, in a background thread.

It speaks what the real ``pulsar-client`` (the C++ client) needs to produce and consume on a
non-partitioned topic: CONNECT, PARTITIONED_METADATA, LOOKUP (answering *Connect* with its
own URL), PRODUCER, SEND with receipts, SUBSCRIBE, FLOW, MESSAGE, ACK, REDELIVER, CLOSE_*,
UNSUBSCRIBE and PING/PONG. Frames are ``[total size][command size][BaseCommand]`` followed,
for SEND and MESSAGE, by ``0x0e01``, a CRC32C of the rest, ``[metadata size][metadata]`` and
the payload; a SEND with a wrong checksum is refused like Pulsar does.

Test controls:
- ``deduplication``: drop a SEND whose sequence id is not above the highest one stored for its
  producer name (Pulsar's broker-side deduplication), answering with the original receipt;
- ``refuse_connections()`` / ``accept_connections()``: the broker is down / back on the same port;
- ``drop_before_receipt(n)``: store the next ``n`` messages, then close the connection before
  their receipts (the client does not know they arrived and sends them again);
- ``receipt_delay``: seconds to wait before each receipt.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import google_crc32c

from dict_ratelimit_tests.pulsar_broker import pulsar_wire_pb2 as pb

log = logging.getLogger(__name__)

MAGIC_CRC32C = 0x0E01
PROTOCOL_VERSION = 15

CONNECT, CONNECTED, SUBSCRIBE, PRODUCER, SEND, SEND_RECEIPT = 2, 3, 4, 5, 6, 7
MESSAGE, ACK, FLOW, UNSUBSCRIBE, SUCCESS, ERROR = 9, 10, 11, 12, 13, 14
CLOSE_PRODUCER, CLOSE_CONSUMER, PRODUCER_SUCCESS, PING, PONG = 15, 16, 17, 18, 19
REDELIVER_UNACKNOWLEDGED, PARTITIONED_METADATA, PARTITIONED_METADATA_RESPONSE = 20, 21, 22
LOOKUP, LOOKUP_RESPONSE = 23, 24
CHECKSUM_ERROR = 9  # ServerError


def crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


@dataclass
class StoredMessage:
    """A message as the broker persisted it."""

    entry_id: int
    producer_name: str
    sequence_id: int
    key: str
    properties: dict[str, str]
    event_time: int
    payload: bytes
    metadata: bytes  # the serialized MessageMetadata, forwarded to consumers as is


@dataclass
class Subscription:
    name: str
    cursor: int  # next entry to deliver for the first time
    redeliver: deque[int] = field(default_factory=deque)
    unacked: dict[int, Connection] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    consumers: list[tuple[Connection, int]] = field(default_factory=list)


@dataclass
class Topic:
    name: str
    ledger_id: int
    messages: list[StoredMessage] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    highest_sequence: dict[str, int] = field(default_factory=dict)


def frame(command: pb.BaseCommand, metadata: bytes | None = None, payload: bytes = b"") -> bytes:
    """One wire frame (with the checksummed metadata+payload section when given)."""
    body = command.SerializeToString()
    data = struct.pack(">I", len(body)) + body
    if metadata is not None:
        rest = struct.pack(">I", len(metadata)) + metadata + payload
        data += struct.pack(">HI", MAGIC_CRC32C, crc32c(rest)) + rest
    return struct.pack(">I", len(data)) + data


class Connection:
    """One client connection: decodes frames, runs commands against the broker state."""

    def __init__(
        self, broker: PulsarTestBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.producers: dict[int, tuple[Topic, str]] = {}
        self.consumers: dict[int, tuple[Topic, Subscription]] = {}
        self.permits: dict[int, int] = {}

    def send(
        self, command: pb.BaseCommand, metadata: bytes | None = None, payload: bytes = b""
    ) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(command, metadata, payload))

    async def serve(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(4)
                (size,) = struct.unpack(">I", header)
                data = await self.reader.readexactly(size)
                await self.handle(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.broker.connections.discard(self)
        for topic, sub in self.consumers.values():
            self.broker.forget_consumer(topic, sub, self)
        self.consumers.clear()
        if not self.writer.is_closing():
            self.writer.close()

    async def handle(self, data: bytes) -> None:
        (command_size,) = struct.unpack(">I", data[:4])
        command = pb.BaseCommand()
        command.ParseFromString(data[4 : 4 + command_size])
        rest = data[4 + command_size :]
        kind = command.type
        if kind == CONNECT:
            version = min(command.connect.protocol_version, PROTOCOL_VERSION)
            self.send(
                pb.BaseCommand(
                    type=CONNECTED,
                    connected=pb.CommandConnected(
                        server_version="dict-ratelimit-test-broker",
                        protocol_version=version,
                        max_message_size=5 * 1024 * 1024,
                    ),
                )
            )
        elif kind == PING:
            self.send(pb.BaseCommand(type=PONG, pong=pb.CommandPong()))
        elif kind == PONG:
            pass
        elif kind == PARTITIONED_METADATA:
            request = command.partitionMetadata
            self.send(
                pb.BaseCommand(
                    type=PARTITIONED_METADATA_RESPONSE,
                    partitionMetadataResponse=pb.CommandPartitionedTopicMetadataResponse(
                        partitions=0, request_id=request.request_id, response=0
                    ),
                )
            )
        elif kind == LOOKUP:
            request = command.lookupTopic
            self.send(
                pb.BaseCommand(
                    type=LOOKUP_RESPONSE,
                    lookupTopicResponse=pb.CommandLookupTopicResponse(
                        brokerServiceUrl=self.broker.url,
                        brokerServiceUrlTls=self.broker.url if self.broker.tls else None,
                        response=1,  # Connect: this broker serves the topic
                        request_id=request.request_id,
                        authoritative=True,
                    ),
                )
            )
        elif kind == PRODUCER:
            self.create_producer(command.producer)
        elif kind == SEND:
            await self.receive(command.send, rest)
        elif kind == SUBSCRIBE:
            self.subscribe(command.subscribe)
        elif kind == FLOW:
            flow = command.flow
            self.permits[flow.consumer_id] = (
                self.permits.get(flow.consumer_id, 0) + flow.messagePermits
            )
            if flow.consumer_id in self.consumers:
                self.broker.dispatch(self.consumers[flow.consumer_id][0])
        elif kind == ACK:
            ack = command.ack
            if ack.consumer_id in self.consumers:
                topic, sub = self.consumers[ack.consumer_id]
                for message_id in ack.message_id:
                    entries = (
                        [e for e in list(sub.unacked) if e <= message_id.entryId]
                        if ack.ack_type == 1
                        else [message_id.entryId]
                    )
                    for entry in entries:
                        sub.unacked.pop(entry, None)
                        sub.acked.add(entry)
        elif kind == REDELIVER_UNACKNOWLEDGED:
            request = command.redeliverUnacknowledgedMessages
            if request.consumer_id in self.consumers:
                topic, sub = self.consumers[request.consumer_id]
                mine = sorted(e for e, c in sub.unacked.items() if c is self)
                for entry in mine:
                    sub.unacked.pop(entry)
                sub.redeliver.extendleft(reversed(mine))
                self.broker.dispatch(topic)
        elif kind in (CLOSE_PRODUCER, CLOSE_CONSUMER, UNSUBSCRIBE):
            if kind == CLOSE_PRODUCER:
                request = command.close_producer
                self.producers.pop(request.producer_id, None)
            else:
                request = command.close_consumer if kind == CLOSE_CONSUMER else command.unsubscribe
                if request.consumer_id in self.consumers:
                    topic, sub = self.consumers.pop(request.consumer_id)
                    self.broker.forget_consumer(topic, sub, self)
                    if kind == UNSUBSCRIBE:
                        topic.subscriptions.pop(sub.name, None)
            self.send(
                pb.BaseCommand(
                    type=SUCCESS, success=pb.CommandSuccess(request_id=request.request_id)
                )
            )
        else:
            log.warning("test broker: command type %s not supported, ignored", kind)

    def create_producer(self, request: pb.CommandProducer) -> None:
        topic = self.broker.topic(request.topic)
        name = request.producer_name or f"test-broker-{next(self.broker.names)}"
        self.producers[request.producer_id] = (topic, name)
        last = topic.highest_sequence.get(name, -1) if self.broker.deduplication else -1
        self.send(
            pb.BaseCommand(
                type=PRODUCER_SUCCESS,
                producer_success=pb.CommandProducerSuccess(
                    request_id=request.request_id, producer_name=name, last_sequence_id=last
                ),
            )
        )

    async def receive(self, send: pb.CommandSend, rest: bytes) -> None:
        magic, checksum = struct.unpack(">HI", rest[:6])
        section = rest[6:]
        if magic != MAGIC_CRC32C or crc32c(section) != checksum:
            self.broker.checksum_errors += 1
            self.send(
                pb.BaseCommand(
                    type=ERROR,
                    error=pb.CommandError(error=CHECKSUM_ERROR, message="checksum mismatch"),
                )
            )
            return
        (metadata_size,) = struct.unpack(">I", section[:4])
        metadata_bytes = section[4 : 4 + metadata_size]
        payload = section[4 + metadata_size :]
        metadata = pb.MessageMetadata()
        metadata.ParseFromString(metadata_bytes)
        topic, producer_name = self.producers[send.producer_id]
        entry = self.broker.store(
            topic, producer_name, send.sequence_id, metadata, metadata_bytes, payload
        )
        if self.broker.take_drop_fault():
            self.close()  # stored, but the client never hears about it
            return
        if self.broker.receipt_delay:
            await asyncio.sleep(self.broker.receipt_delay)
        self.send(
            pb.BaseCommand(
                type=SEND_RECEIPT,
                send_receipt=pb.CommandSendReceipt(
                    producer_id=send.producer_id,
                    sequence_id=send.sequence_id,
                    message_id=pb.MessageIdData(ledgerId=topic.ledger_id, entryId=entry),
                ),
            )
        )

    def subscribe(self, request: pb.CommandSubscribe) -> None:
        topic = self.broker.topic(request.topic)
        sub = topic.subscriptions.get(request.subscription)
        if sub is None:
            start = 0 if request.initialPosition == 1 else len(topic.messages)
            sub = topic.subscriptions[request.subscription] = Subscription(
                request.subscription, start
            )
        sub.consumers.append((self, request.consumer_id))
        self.consumers[request.consumer_id] = (topic, sub)
        self.send(
            pb.BaseCommand(type=SUCCESS, success=pb.CommandSuccess(request_id=request.request_id))
        )


class PulsarTestBroker:
    """Start with ``start()`` (or as a context manager); ``url`` is ``pulsar://127.0.0.1:<port>``."""

    def __init__(self, *, deduplication: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.deduplication = deduplication
        self.tls = tls  # serve pulsar+ssl:// (TLS, and mutual TLS if the context asks for it)
        self.receipt_delay = 0.0
        self.checksum_errors = 0
        self.duplicates_dropped = 0
        self.connections_accepted = 0
        self.names = itertools.count(1)
        self.topics: dict[str, Topic] = {}
        self.connections: set[Connection] = set()
        self._drops = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "pulsar+ssl" if self.tls is not None else "pulsar"
        return f"{scheme}://127.0.0.1:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> PulsarTestBroker:
        self._thread.start()
        self.accept_connections()
        return self

    def stop(self) -> None:
        self.refuse_connections()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> PulsarTestBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], object]) -> object:
        async def run() -> object:
            result = fn()
            if asyncio.iscoroutine(result):
                return await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    # --- faults ----------------------------------------------------------------------------

    def refuse_connections(self) -> None:
        """Stop listening and drop every connection: the broker is down."""

        async def down() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for connection in list(self.connections):
                connection.close()

        self._call(down)

    def accept_connections(self) -> None:
        """Listen again (on the same port once one was chosen)."""

        async def up() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(
                    self._accept, "127.0.0.1", self.port, reuse_address=True, ssl=self.tls
                )
                self.port = self._server.sockets[0].getsockname()[1]

        self._call(up)

    def drop_before_receipt(self, count: int = 1) -> None:
        self._drops = count

    def take_drop_fault(self) -> bool:
        if self._drops > 0:
            self._drops -= 1
            return True
        return False

    # --- state -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        await connection.serve()

    def topic(self, name: str) -> Topic:
        if name not in self.topics:
            self.topics[name] = Topic(name, ledger_id=len(self.topics) + 1)
        return self.topics[name]

    def store(
        self,
        topic: Topic,
        producer_name: str,
        sequence_id: int,
        metadata: pb.MessageMetadata,
        metadata_bytes: bytes,
        payload: bytes,
    ) -> int:
        """Persist one message (or find the original of a duplicate); returns its entry id."""
        if self.deduplication and sequence_id <= topic.highest_sequence.get(producer_name, -1):
            self.duplicates_dropped += 1
            for message in topic.messages:
                if message.producer_name == producer_name and message.sequence_id == sequence_id:
                    return message.entry_id
            return 0
        entry = len(topic.messages)
        topic.messages.append(
            StoredMessage(
                entry_id=entry,
                producer_name=producer_name,
                sequence_id=sequence_id,
                key=metadata.partition_key,
                properties={p.key: p.value for p in metadata.properties},
                event_time=metadata.event_time,
                payload=payload,
                metadata=metadata_bytes,
            )
        )
        topic.highest_sequence[producer_name] = max(
            sequence_id, topic.highest_sequence.get(producer_name, -1)
        )
        self.dispatch(topic)
        return entry

    def forget_consumer(self, topic: Topic, sub: Subscription, connection: Connection) -> None:
        sub.consumers = [(c, i) for c, i in sub.consumers if c is not connection]
        mine = sorted(e for e, c in sub.unacked.items() if c is connection)
        for entry in mine:
            sub.unacked.pop(entry)
        sub.redeliver.extendleft(reversed(mine))

    def dispatch(self, topic: Topic) -> None:
        """Deliver what each subscription owes its consumers, within their permits."""
        for sub in topic.subscriptions.values():
            for connection, consumer_id in list(sub.consumers):
                while connection.permits.get(consumer_id, 0) > 0:
                    if sub.redeliver:
                        entry, redelivery = sub.redeliver.popleft(), 1
                    elif sub.cursor < len(topic.messages):
                        entry, redelivery = sub.cursor, 0
                        sub.cursor += 1
                    else:
                        break
                    if entry in sub.acked:
                        continue
                    message = topic.messages[entry]
                    sub.unacked[entry] = connection
                    connection.permits[consumer_id] -= 1
                    connection.send(
                        pb.BaseCommand(
                            type=MESSAGE,
                            message=pb.CommandMessage(
                                consumer_id=consumer_id,
                                message_id=pb.MessageIdData(
                                    ledgerId=topic.ledger_id, entryId=entry
                                ),
                                redelivery_count=redelivery,
                            ),
                        ),
                        message.metadata,
                        message.payload,
                    )

    def messages(self, topic: str) -> list[StoredMessage]:
        """What the topic holds, in order (a copy, read on the broker's thread)."""
        return list(self._call(lambda: list(self.topic(topic).messages)))  # type: ignore[arg-type]
