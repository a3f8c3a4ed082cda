"""How every Kafka client connects: the `[kafka]` settings (recsys.config.KafkaSecurity) as each
client library's keyword arguments, made here and nowhere else.

    kafka_python(sec)   KafkaProducer / KafkaConsumer / KafkaAdminClient (the jobs, the CLI, the demo)
    aiokafka(sec)       AIOKafkaConsumer / AIOKafkaProducer (the broadcast listener, tests)
    topic_reader(...)   an AIOKafkaConsumer on every partition of a topic (the jobs' whole-topic reads)
    librdkafka(sec)     confluent-kafka's properties, for BulkReader: a librdkafka consumer on every
                        partition of a topic (the retrain's changelog read, where the fetch is the cost)
    faust(sec)          the Faust app's `broker_credentials` (its consumer, producer, and the bulk
                        restore, which takes Faust's credentials: streaming/worker/restore.py)
    check(bootstrap)    one connection at start: wrong credentials or an untrusted certificate stop
                        the command with one line (`KafkaAuthError`, exit code KAFKA_AUTH) instead of
                        clients retrying for ever

`sec` defaults to the process's settings: the ones a `recsys` command loaded (`configure`, called by
streaming/cli/options.py), else the environment's. The three Python libraries get the same
`ssl.SSLContext` (the CA, the client certificate for mutual TLS, hostname checking), so they cannot
disagree; librdkafka, which has its own TLS, gets the same files and the same hostname rule. No
password is ever put in a message: errors name the setting and the user, not the secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from recsys.config import KafkaSecurity, load_config
from recsys.errors import ConfigError, ExitCode, RecsysError

_configured: KafkaSecurity | None = None


class KafkaAuthError(RecsysError):
    """Kafka refused this client: wrong credentials, an untrusted or invalid certificate, or a
    listener that speaks another protocol. Not retried: a retry cannot fix it."""

    exit_code = ExitCode.KAFKA_AUTH


def configure(sec: KafkaSecurity | None) -> None:
    """Make `sec` the process's settings (a command calls this once it has loaded its own)."""
    global _configured
    _configured = sec


@contextlib.contextmanager
def using(sec: KafkaSecurity) -> Iterator[KafkaSecurity]:
    """The process's settings are `sec` inside the block (tests that talk to two brokers)."""
    before = _configured
    configure(sec)
    try:
        yield sec
    finally:
        configure(before)


def security(sec: KafkaSecurity | None = None) -> KafkaSecurity:
    """`sec`, else what `configure` set, else the environment's (`STREAMREC_KAFKA_*`)."""
    if sec is not None:
        return sec
    return _configured if _configured is not None else load_config().kafka


def password(sec: KafkaSecurity) -> str:
    """The SASL password: `sasl_password`, else the first line of `sasl_password_file`."""
    if sec.sasl_password:
        return sec.sasl_password
    try:
        lines = Path(sec.sasl_password_file).expanduser().read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"kafka.sasl_password_file {sec.sasl_password_file}: {e.strerror}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"kafka.sasl_password_file {sec.sasl_password_file} is empty")
    return lines[0]


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2+, the broker verified against `ssl_cafile` (else the system's
    CAs), its host name checked unless `ssl_check_hostname` is off, and this client's certificate
    for mutual TLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = sec.ssl_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if sec.ssl_cafile:
            ctx.load_verify_locations(cafile=str(Path(sec.ssl_cafile).expanduser()))
        else:
            ctx.load_default_certs()
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"kafka.ssl_cafile {sec.ssl_cafile}: not a readable PEM CA file ({_reason(e)})") from None
    if sec.ssl_certfile:
        try:
            ctx.load_cert_chain(
                str(Path(sec.ssl_certfile).expanduser()),
                str(Path(sec.ssl_keyfile).expanduser()),
                password=sec.ssl_key_password or None,
            )
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"kafka.ssl_certfile {sec.ssl_certfile} / kafka.ssl_keyfile {sec.ssl_keyfile}: "
                f"not a readable certificate and matching key ({_reason(e)})"
            ) from None
    return ctx


def _reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__


def _common(sec: KafkaSecurity) -> dict[str, Any]:
    """The arguments aiokafka and kafka-python name alike."""
    out: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.tls:
        out["ssl_context"] = ssl_context(sec)
    if sec.sasl:
        out.update(
            sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username, sasl_plain_password=password(sec)
        )
    return out


def kafka_python(sec: KafkaSecurity | None = None) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    return _common(security(sec))


def aiokafka(sec: KafkaSecurity | None = None) -> dict[str, Any]:
    """Keyword arguments for aiokafka's AIOKafkaConsumer and AIOKafkaProducer."""
    return _common(security(sec))


@contextlib.asynccontextmanager
async def topic_reader(bootstrap: str, topic: str, client_id: str, fetch_bytes: int = 16 << 20) -> AsyncIterator[Any]:
    """An aiokafka consumer (no group, no commits, started and stopped around the block) assigned
    every partition of `topic`, and those partitions (none if the topic does not exist): the
    jobs' whole-topic reads (the state changelog, the clickstream's window). `fetch_bytes` per
    partition and fetch: large fetches are what makes aiokafka's read fast."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streaming import faust_compat

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a start offset removed by retention meanwhile: the oldest kept
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_bytes=4 * fetch_bytes,
        fetch_max_wait_ms=100,
        client_id=client_id,
        **aiokafka(),
    )
    await consumer.start()
    try:
        await faust_compat.refresh_metadata(consumer)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if tps:
            consumer.assign(tps)
        yield consumer, tps
    finally:
        await consumer.stop()


def librdkafka(sec: KafkaSecurity | None = None) -> dict[str, Any]:
    """Configuration properties for confluent-kafka (librdkafka). librdkafka has its own TLS
    (OpenSSL, in the wheel) and takes files, not an `ssl.SSLContext`: the same files, the CA or
    else the system's (`probe`: the usual locations), the host name checked unless
    `ssl_check_hostname` is off. The files are checked first as for the other clients, so that a
    bad one names its setting instead of failing inside librdkafka."""
    sec = security(sec)
    out: dict[str, Any] = {"security.protocol": sec.security_protocol}
    if sec.tls:
        ssl_context(sec)  # ConfigError naming the setting, as the other clients give
        out["ssl.ca.location"] = str(Path(sec.ssl_cafile).expanduser()) if sec.ssl_cafile else "probe"
        out["ssl.endpoint.identification.algorithm"] = "https" if sec.ssl_check_hostname else "none"
        if sec.ssl_certfile:
            out["ssl.certificate.location"] = str(Path(sec.ssl_certfile).expanduser())
            out["ssl.key.location"] = str(Path(sec.ssl_keyfile).expanduser())
            if sec.ssl_key_password:
                out["ssl.key.password"] = sec.ssl_key_password
    if sec.sasl:
        out.update({"sasl.mechanism": sec.sasl_mechanism, "sasl.username": sec.sasl_username})
        out["sasl.password"] = password(sec)
    return out


class BulkReader:
    """A librdkafka consumer (confluent-kafka) on every partition of a topic, from its first
    offsets (no group, no commits): the retrain's changelog read, where the fetch itself is the
    cost. librdkafka fetches, checks and parses record batches in its own threads, in C, off the
    GIL; `batch` hands over keys and values in bulk (aiokafka makes a Python object per record in
    the reading thread: that was ~35% of the read's CPU). Everything else keeps aiokafka
    (`topic_reader`). Use as a context manager; `partitions` is empty if the topic does not exist."""

    def __init__(self, bootstrap: str, topic: str, client_id: str, fetch_bytes: int = 16 << 20, timeout_s: float = 60):
        import logging

        from confluent_kafka import Consumer

        self.topic = topic
        self.timeout_s = timeout_s
        self.errors: list[Any] = []  # librdkafka's error callbacks: auth and TLS failures end the read
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "group.id": client_id,  # required by the client; never joined (assign, no subscribe)
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",  # a start offset removed by retention meanwhile: the oldest kept
                "enable.partition.eof": True,  # a partition read to its high watermark says so
                "max.partition.fetch.bytes": fetch_bytes,
                "fetch.max.bytes": 4 * fetch_bytes,
                "queued.max.messages.kbytes": (4 * fetch_bytes) >> 10,  # the read-ahead, bounded
                "fetch.wait.max.ms": 100,
                "logger": logging.getLogger("streamrec.kafka"),
                "error_cb": self.errors.append,
                **librdkafka(),
            }
        )
        self.partitions: list[int] = []

    def __enter__(self) -> BulkReader:
        from confluent_kafka import KafkaException

        try:
            meta = self.consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as e:
            failure = self.failure(f"the metadata of {self.topic}", e)
            self.close()
            raise failure from None
        tmeta = meta.topics.get(self.topic)
        if tmeta is not None and tmeta.error is None:
            self.partitions = sorted(tmeta.partitions)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.consumer.close()

    def failure(self, what: str, e: BaseException | None = None) -> RecsysError:
        """The error to raise when `what` could not be had: an authentication or TLS failure
        librdkafka reported (KafkaAuthError), else a RecsysError with librdkafka's reason."""
        self.consumer.poll(0)  # serves librdkafka's pending error callbacks (a metadata call does not)
        for err in self.errors:  # librdkafka's own error codes are named with a leading underscore
            if err.name() in ("_AUTHENTICATION", "_SSL"):
                return KafkaAuthError(f"Kafka refused this client while reading {what}: {err.str()}")
        why = e if e is not None else (self.errors[-1].str() if self.errors else "no answer")
        return RecsysError(f"reading {what}: {why}")

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """partition -> (first offset, end offset) now."""
        from confluent_kafka import KafkaException, TopicPartition

        out = {}
        for p in self.partitions:
            try:
                out[p] = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), self.timeout_s, False)
            except KafkaException as e:
                raise self.failure(f"the offsets of {self.topic}", e) from None
        return out

    def start(self, begin: dict[int, int]) -> None:
        """Read these partitions from these offsets."""
        from confluent_kafka import TopicPartition

        self.consumer.assign([TopicPartition(self.topic, p, off) for p, off in begin.items()])

    def batch(self, max_records: int, timeout_s: float) -> tuple[list[Any], list[Any], list[int], int]:
        """Up to `max_records` records as (keys, values, partitions read to their end, records
        consumed): waits at most `timeout_s` for the first. A record-level error other than a
        partition's end raises."""
        from confluent_kafka import Message

        msgs = self.consumer.consume(max_records, timeout_s)
        # map over the method descriptors: the per-record work stays in C
        done: list[int] = []
        if any(map(Message.error, msgs)):
            for m in msgs:
                if (e := m.error()) is None:
                    continue
                if e.name() != "_PARTITION_EOF":
                    raise RecsysError(f"reading {self.topic}: {e.str()}")
                if (p := m.partition()) is not None:
                    done.append(p)
            msgs = [m for m in msgs if m.error() is None]
        return list(map(Message.key, msgs)), list(map(Message.value, msgs)), done, len(msgs)

    def pause(self, partition: int) -> None:
        """Fetch no more of this partition (read to the end wanted)."""
        from confluent_kafka import TopicPartition

        self.consumer.pause([TopicPartition(self.topic, partition)])

    def positions(self) -> dict[int, int]:
        """partition -> the offset after the last record handed over (negative: none yet)."""
        from confluent_kafka import TopicPartition

        got = self.consumer.position([TopicPartition(self.topic, p) for p in self.partitions])
        return {tp.partition: tp.offset for tp in got}


def faust(sec: KafkaSecurity | None = None) -> dict[str, Any]:
    """Settings for `faust.App` (`broker_credentials`); empty for PLAINTEXT."""
    import faust as faust_

    sec = security(sec)
    if sec.sasl:
        return {
            "broker_credentials": faust_.SASLCredentials(
                username=sec.sasl_username,
                password=password(sec),
                mechanism=sec.sasl_mechanism,
                ssl_context=ssl_context(sec) if sec.tls else None,
            )
        }
    if sec.tls:
        return {"broker_credentials": faust_.SSLCredentials(ssl_context(sec))}
    return {}


# -- the check at start ---------------------------------------------------------------------------
# ApiVersions v0 (API key 18): the one request a broker answers before any SASL exchange, so it
# shows whether TLS (and a client certificate) was accepted without logging in. Then, without
# SASL, Metadata v1 (key 3, all topics): a SASL listener closes the connection instead.
_CLIENT_ID = b"\x00\x0fstreamrec-check"
_API_VERSIONS = b"\x00\x12\x00\x00\x00\x00\x00\x01" + _CLIENT_ID
_METADATA = b"\x00\x03\x00\x01\x00\x00\x00\x02" + _CLIENT_ID + b"\xff\xff\xff\xff"


def _request(sock: ssl.SSLSocket, request: bytes) -> bool:
    """Send one request; True when a whole response came back, False when the broker hung up."""
    sock.sendall(len(request).to_bytes(4, "big") + request)
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return False
        head += chunk
    left = int.from_bytes(head, "big")
    while left > 0:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            return False
        left -= len(chunk)
    return True


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _tls_check(server: str, sec: KafkaSecurity, ctx: ssl.SSLContext, timeout: float) -> None:
    """One TLS connection and a request or two: a certificate problem, either way, as
    KafkaAuthError. Unreachable: returns (the clients report that as they always have)."""
    host, port = _split(server)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raw.close()
        raise KafkaAuthError(
            f"Kafka at {server}: its TLS certificate is not trusted ({e.verify_message}); kafka.ssl_cafile "
            f"must name the CA that signed it (now: {sec.ssl_cafile or 'the system CAs'})"
        ) from None
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as e:
        raw.close()
        raise KafkaAuthError(
            f"Kafka at {server} hung up during the TLS handshake ({type(e).__name__}): is that a TLS listener? "
            f"(kafka.security_protocol is {sec.security_protocol})"
        ) from None
    except ssl.SSLError as e:
        raw.close()
        raise KafkaAuthError(_tls_refused(server, sec, e)) from None
    except OSError:
        raw.close()
        return  # e.g. the broker went away: the clients say so as they always have
    try:
        with tls:
            if not _request(tls, _API_VERSIONS):
                raise KafkaAuthError(
                    f"Kafka at {server} closed the TLS connection: it did not accept this client "
                    "(a client certificate it does not trust, or none: kafka.ssl_certfile)"
                )
            if not sec.sasl and not _request(tls, _METADATA):
                raise KafkaAuthError(
                    f"Kafka at {server} closed the connection after TLS: that listener wants a SASL login "
                    "(kafka.security_protocol SASL_SSL)"
                )
    except ssl.SSLError as e:
        raise KafkaAuthError(_tls_refused(server, sec, e)) from None
    except (TimeoutError, ConnectionError, OSError) as e:
        raise KafkaAuthError(
            f"Kafka at {server} dropped the TLS connection ({type(e).__name__}): it did not accept this client"
        ) from None


def _tls_refused(server: str, sec: KafkaSecurity, e: ssl.SSLError) -> str:
    reason = e.reason or type(e).__name__
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"Kafka at {server} does not speak TLS on that port (kafka.security_protocol is {sec.security_protocol})"
    return (
        f"Kafka at {server} refused the TLS connection ({reason}): "
        "a client certificate it does not accept, or none (kafka.ssl_certfile, kafka.ssl_keyfile)"
    )


def check(bootstrap: str, sec: KafkaSecurity | None = None, timeout: float = 15.0) -> None:
    """Connect once as the clients will and raise KafkaAuthError (one line, the exit code
    KAFKA_AUTH) if Kafka refuses this client. PLAINTEXT, or Kafka unreachable: nothing to check
    here. The clients themselves would retry an authentication failure for ever."""
    sec = security(sec)
    if not sec.secured or not bootstrap:
        return
    kwargs = kafka_python(sec)  # a missing or unreadable file: ConfigError, naming the setting
    server = bootstrap.split(",")[0]
    if sec.tls:
        _tls_check(server, sec, kwargs["ssl_context"], timeout)
    if sec.sasl:
        asyncio.run(_sasl_check(server, sec, timeout))


async def _sasl_check(server: str, sec: KafkaSecurity, timeout: float) -> None:
    """One connection with the SASL login, as aiokafka makes it (kafka-python 3 hides a refused
    login behind a bootstrap timeout and retries it until then)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaConnectionError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    host, port = _split(server)
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout * 1000), **aiokafka(sec)), timeout
        )
    except SaslAuthenticationFailed:
        raise KafkaAuthError(_sasl_refused(server, sec)) from None
    except UnsupportedSaslMechanismError:
        raise KafkaAuthError(
            f"Kafka at {server} does not offer SASL mechanism {sec.sasl_mechanism} (kafka.sasl_mechanism)"
        ) from None
    except IllegalSaslStateError:
        raise KafkaAuthError(
            f"Kafka at {server} does not take a SASL login on that port (kafka.security_protocol is "
            f"{sec.security_protocol})"
        ) from None
    except (OSError, TimeoutError, KafkaConnectionError):
        return  # unreachable: the clients say so as they always have
    except KafkaError as e:
        raise KafkaAuthError(f"Kafka at {server} refused the SASL connection ({type(e).__name__})") from None
    conn.close()


def _sasl_refused(server: str, sec: KafkaSecurity) -> str:
    return (
        f"Kafka at {server} rejected the {sec.sasl_mechanism} login of user {sec.sasl_username!r}: "
        "wrong user name or password (kafka.sasl_username, kafka.sasl_password / kafka.sasl_password_file)"
    )
