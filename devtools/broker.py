"""Start/stop a real single-node Apache Kafka broker (KRaft) on loopback.

No Kafka distribution is downloaded from apache.org: the broker's jars and their
runtime dependencies are fetched once from Maven Central with ``mvn`` into a cache
(``~/.cache/streamrec/kafka/<version>/libs``, root: the ``ops.kafka_cache`` setting,
``STREAMREC_KAFKA_CACHE``) and the broker runs as ``java -cp '<libs>/*' kafka.Kafka``.

Everything a broker owns lives in its data dir: ``server.properties``,
``log4j2.properties``, ``broker.log`` (WARN and up), ``broker.out`` (JVM stdout/err),
``logs/`` (the Kafka log dir, with ``meta.properties``) and ``broker.json``
(pid, ports, version) so that a restarted broker keeps its ports and a different
process (``recsys broker stop``) can find it.

CLI (``streaming/cli/broker.py``)::

    recsys broker start [--data-dir D] [--port P] [--foreground] [--secure] [--mtls]
    recsys broker stop [--data-dir D]
    recsys broker status [--data-dir D]

``--secure`` makes the one client listener SASL_SSL (SCRAM-SHA-512 and -256), ``--mtls`` makes it
SSL with client certificates required, both give one of each (the SSL one on ``mtls_port``): a CA,
the broker's certificate (for 127.0.0.1 and localhost) and a client certificate are made with
``openssl`` in ``<data dir>/tls`` on first start, the SCRAM users are written at format time
(``kafka-storage format --add-scram``) with a random password kept in ``tls/client.password``
(mode 0600), and :meth:`KafkaBroker.client_env` gives the ``STREAMREC_KAFKA_*`` settings a client
needs. The broker talks to itself over that listener too; only the controller's port (loopback)
is plaintext.

If the configuration names a Kafka (``stream.bootstrap``, ``STREAMREC_BOOTSTRAP``),
:func:`broker_from_env` starts nothing and returns a handle on that existing cluster.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recsys.config import Config, KafkaSecurity, env_name, load_config
from recsys.errors import RecsysError

DEFAULT_KAFKA_VERSION = "4.4.0"
# Kafka 4.x logs through slf4j 1.7 (its pom pins slf4j-api 1.7.36) but ships no
# backend; its own distribution uses log4j2 via the slf4j-1.x binding.
LOG4J_VERSION = "2.25.5"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"  # pinned: Maven 3.8's default (2.8) is ancient
HOST = "127.0.0.1"

# The environment variables of the settings this module uses (read by recsys.config only).
ENV_CACHE = env_name("ops", "kafka_cache")
ENV_DATA_DIR = env_name("ops", "kafka_dir")
ENV_BOOTSTRAP = env_name("stream", "bootstrap")

JVM_OPTS = [
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    # fewer JIT/GC threads: the box has 2 cores shared with the Python workers
    "-XX:CICompilerCount=2",
    "-XX:ParallelGCThreads=2",
    "-XX:ConcGCThreads=1",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
]
MARKER = ".complete"
SECURITY_MODES = ("plaintext", "sasl_ssl", "mtls", "both")
CLIENT_USER = "streamrec"  # the SCRAM user clients log in as
BROKER_USER = "streamrec-broker"  # the SCRAM user the broker uses on its own listener


class BrokerError(RecsysError, RuntimeError):
    """The broker could not be fetched, formatted, started or stopped."""


class BrokerNotReady(BrokerError, TimeoutError):
    """The broker did not become ready within the timeout."""


# --------------------------------------------------------------------- jars


def kafka_cache_root(cache: str | None = None) -> Path:
    """The jar cache: `cache` (a configuration's ``ops.kafka_cache``), else the process's."""
    return Path(cache if cache is not None else load_config().ops.kafka_cache).expanduser()


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streamrec</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId><version>{plugin}</version>
  </plugin></plugins></build>
</project>
"""


def ensure_kafka_jars(version: str = DEFAULT_KAFKA_VERSION, cache: Path | str | None = None) -> Path:
    """Return the dir holding Kafka ``version``'s jars, fetching them once via Maven."""
    root = Path(cache).expanduser() if cache is not None else kafka_cache_root()
    vdir = root / version
    libs = vdir / "libs"
    if (vdir / MARKER).exists():
        return libs
    vdir.mkdir(parents=True, exist_ok=True)
    # Lock so that concurrent test sessions don't fetch into the same dir at once.
    with open(vdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (vdir / MARKER).exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven ('mvn') is needed once to fetch the Kafka jars, but it is not on PATH")
        print(f"fetching Kafka {version} jars from Maven Central into {libs} (one time)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        (vdir / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION, plugin=DEPENDENCY_PLUGIN_VERSION))
        tmp = vdir / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(vdir / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        res = subprocess.run(cmd, cwd=vdir, capture_output=True, text=True)
        if res.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"fetching Kafka {version} with Maven failed (rc={res.returncode}):\n"
                + _tail(res.stdout + res.stderr, 40)
            )
        tmp.rename(libs)
        (vdir / MARKER).write_text(f"{version}\n")
        n = len(list(libs.glob("*.jar")))
        print(f"fetched {n} jars in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return libs


# --------------------------------------------------------------- readiness


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _file_tail(path: Path | None, lines: int = 30, offset: int = 0) -> str:
    """The first ERROR/FATAL lines (the cause; stack traces bury it) plus the last lines."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    all_lines = text.splitlines()
    errors = [ln for ln in all_lines if "] ERROR " in ln or "] FATAL " in ln][:3]
    tail = all_lines[-lines:]
    return "\n".join([*(e for e in errors if e not in tail), *(["..."] if errors else []), *tail])


def _split(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host or HOST, int(port)


def wait_until_ready(
    bootstrap: str,
    timeout: float = 60.0,
    *,
    log_file: Path | None = None,
    alive: Callable[[], bool] | None = None,
    security: KafkaSecurity | None = None,
) -> None:
    """Block until ``bootstrap`` accepts connections and answers admin metadata requests.

    Raises :class:`BrokerNotReady` after ``timeout`` seconds (or as soon as
    ``alive()`` returns False), quoting the last error and the tail of ``log_file``.
    """
    # imported lazily: the CLI's stop/status don't need kafka-python
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError

    from streaming.kafka import clients

    auth = clients.kafka_python(security)
    deadline = time.monotonic() + timeout
    host, port = _split(bootstrap)
    last = "nothing tried yet"

    def fail(why: str) -> BrokerNotReady:
        msg = f"Kafka at {bootstrap} not ready: {why}; last error: {last}"
        tail = _file_tail(log_file)
        if tail:
            msg += f"\n--- tail of {log_file} ---\n{tail}"
        return BrokerNotReady(msg)

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise fail(f"timed out after {timeout:g}s")
        if alive is not None and not alive():
            raise fail("broker process exited")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, left)):
                pass
        except OSError as e:
            last = f"connect {host}:{port}: {e}"
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        # The port opens before the broker has registered with its controller and
        # is unfenced; only then can topics be created and produced to.
        ms = max(1000, int(min(5.0, left) * 1000))
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="streamrec-ready",
                request_timeout_ms=ms,
                bootstrap_timeout_ms=ms,
                **auth,
            )
            cluster = admin.describe_cluster()
            if any(not b.get("is_fenced") for b in cluster.get("brokers", ())):
                admin.list_topics()
                return
            last = "no unfenced broker registered yet"
        except KafkaConfigurationError:
            raise  # a bug, not a broker that is still starting
        except Exception as e:  # noqa: BLE001 - any other client error just means "not yet"
            last = f"{type(e).__name__}: {e}"
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    admin.close()
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))


# ------------------------------------------------------------------- broker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Guard against pid reuse (and zombies): it must still be a Kafka JVM.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when this process dies (Linux only).

    Non-detached brokers should die with the Python process that started them even
    if it is SIGKILLed, so aborted test runs don't leave JVMs hogging the 2 cores.
    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only use it
    from the main thread. libc is loaded here, not in the forked child.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


@dataclass
class KafkaBroker:
    data_dir: Path
    port: int | None = None  # None -> reuse the stored port, else pick a free one
    version: str = DEFAULT_KAFKA_VERSION
    controller_port: int | None = None
    external: str | None = field(default=None, repr=False)  # bootstrap of a broker we don't manage
    jar_cache: str | None = field(default=None, repr=False)  # None: the configuration's ops.kafka_cache
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    started_in: float | None = field(default=None, init=False, repr=False)  # seconds, last start()
    _atexit_registered: bool = field(default=False, init=False, repr=False)
    security: str | None = None  # SECURITY_MODES; None: as stored in broker.json, else plaintext
    mtls_port: int | None = None  # the SSL listener in "both" mode

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.security is not None and self.security not in SECURITY_MODES:
            raise BrokerError(f"security must be one of {SECURITY_MODES}, got {self.security!r}")

    # paths
    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def out_file(self) -> Path:
        return self.data_dir / "broker.out"

    @property
    def bootstrap(self) -> str:
        if self.external:
            return self.external
        if self.port is None:
            self._load_ports()
        if self.port is None:
            raise BrokerError(f"no port known for the broker in {self.data_dir} (never started?)")
        return f"{HOST}:{self.port}"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _load_ports(self) -> None:
        st = self._state()
        if self.port is None:
            self.port = st.get("port")
        if self.controller_port is None:
            self.controller_port = st.get("controller_port")
        if self.security is None:
            self.security = st.get("security")
        if self.mtls_port is None:
            self.mtls_port = st.get("mtls_port")

    @property
    def mode(self) -> str:
        if self.security is None:
            self._load_ports()
        return self.security or "plaintext"

    def _write_state(self, pid: int | None) -> None:
        st = {
            "pid": pid,
            "port": self.port,
            "controller_port": self.controller_port,
            "security": self.mode,
            "mtls_port": self.mtls_port,
            "version": self.version,
            "bootstrap": f"{HOST}:{self.port}",
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2) + "\n")
        tmp.replace(self.state_file)

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._state().get("pid")

    def is_running(self) -> bool:
        if self.external:
            return True
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_alive(self.pid)

    # config
    def _write_config(self) -> Path:
        clients_ = self._listeners()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": ",".join(
                [*(f"{n}://{HOST}:{p}" for n, p in clients_.items()), f"CONTROLLER://{HOST}:{self.controller_port}"]
            ),
            "advertised.listeners": ",".join(f"{n}://{HOST}:{p}" for n, p in clients_.items()),
            "listener.security.protocol.map": ",".join(f"{n}:{n}" for n in clients_) + ",CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": next(iter(clients_)),
            # Static voter set: the controller port is fixed for the life of the data
            # dir anyway (kept in broker.json), and it avoids KIP-853 --standalone.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            # 50 partitions (the default) make the first consumer group join slow.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),  # default 128 MB vs a 512 MB heap
            # Replayed datasets carry old event timestamps; time-based retention would
            # silently delete them, so this dev broker keeps everything.
            "log.retention.ms": "-1",
            "delete.topic.enable": "true",
            **self._security_props(),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        path.chmod(0o600)  # it holds the broker's own SCRAM password in secured modes
        log_path = str(self.log_file).replace("\\", "/")
        (self.data_dir / "log4j2.properties").write_text(
            "status = error\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {log_path}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
        )
        return path

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java (17+) is needed to run Kafka but is not on PATH")
        return [
            java,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path, config: Path) -> None:
        cluster_id = new_cluster_id()
        # The storage tool is short-lived: skip C2 to cut its startup time.
        cmd = self._java(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config))
        if self.mode in ("sasl_ssl", "both"):
            # SCRAM users exist before the broker first starts (KIP-900): it needs its own to
            # reach itself over its SASL_SSL listener.
            client, broker = self._password("client"), self._password("broker")
            for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                cmd += ["--add-scram", f"{mech}=[name={CLIENT_USER},password={client}]"]
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={BROKER_USER},password={broker}]"]
        cmd.insert(1, "-XX:TieredStopAtLevel=1")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage in {self.log_dir} failed (rc={res.returncode}):\n"
                + _tail(res.stdout + res.stderr)
                + "\n"
                + _file_tail(self.log_file)
            )

    # lifecycle
    def start(self, timeout: float = 60.0, *, detach: bool = False) -> None:
        """Start (formatting a fresh data dir) and wait until ready.

        A data dir that already has ``meta.properties`` is restarted as is, on the
        ports stored in ``broker.json``. ``detach=True`` makes the JVM outlive this
        Python process (CLI ``start``); otherwise it is stopped at interpreter exit
        or when this process dies.
        """
        if self.external:
            wait_until_ready(self.external, timeout)
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_ports()
        if self.is_running():
            wait_until_ready(
                self.bootstrap, timeout, log_file=self.log_file, alive=self.is_running, security=self.client_security()
            )
            return
        libs = ensure_kafka_jars(self.version, self.jar_cache)
        # Free ports are picked by binding port 0 and releasing it, so another process
        # can grab one before the JVM binds. Only auto-picked ports may be re-picked.
        fresh_ports = self.port is None and self.controller_port is None
        for attempt in range(3 if fresh_ports else 1):
            if self.port is None:
                self.port = free_port()
            if self.controller_port is None or self.controller_port == self.port:
                self.controller_port = free_port()
            if self.mode == "both" and self.mtls_port in (None, self.port, self.controller_port):
                self.mtls_port = free_port()
            if self.mode != "plaintext":
                self._make_tls()
            config = self._write_config()
            if not (self.log_dir / "meta.properties").exists():
                self._format(libs, config)
            try:
                self._launch(libs, config, timeout, detach)
                return
            except BrokerNotReady as e:
                if not (fresh_ports and "Address already in use" in str(e) and attempt < 2):
                    raise
                self.port = self.controller_port = self.mtls_port = None

    def _launch(self, libs: Path, config: Path, timeout: float, detach: bool) -> None:
        t0 = time.monotonic()
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        out_offset = self.out_file.stat().st_size if self.out_file.exists() else 0
        with open(self.out_file, "ab") as out:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=detach,
                preexec_fn=None if detach else _die_with_parent_fn(),
            )
        self._write_state(self._proc.pid)
        if not detach and not self._atexit_registered:
            import atexit

            atexit.register(self._stop_quietly)
            self._atexit_registered = True
        try:
            wait_until_ready(self.bootstrap, timeout, alive=self.is_running, security=self.client_security())
        except BrokerNotReady as e:
            self.stop()
            msg = str(e)
            for path, offset in ((self.log_file, log_offset), (self.out_file, out_offset)):
                tail = _file_tail(path, 25, offset)
                if tail:
                    msg += f"\n--- {path} ---\n{tail}"
            raise BrokerNotReady(msg) from None
        self.started_in = time.monotonic() - t0

    # security
    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def mtls_bootstrap(self) -> str:
        """The mutual-TLS listener ("mtls": the only one; "both": the second)."""
        if self.mode == "mtls":
            return self.bootstrap
        if self.mode != "both" or self.mtls_port is None:
            raise BrokerError(f"the broker in {self.data_dir} has no mutual-TLS listener (mode {self.mode})")
        return f"{HOST}:{self.mtls_port}"

    def _listeners(self) -> dict[str, int | None]:
        """Client listener name (= its security protocol) -> port; the first is the broker's own."""
        return {
            "plaintext": {"PLAINTEXT": self.port},
            "sasl_ssl": {"SASL_SSL": self.port},
            "mtls": {"SSL": self.port},
            "both": {"SASL_SSL": self.port, "SSL": self.mtls_port},
        }[self.mode]

    def _password(self, who: str) -> str:
        """The SCRAM password of `who` (client, broker): made once, kept in tls/ (mode 0600)."""
        path = self.tls_dir / f"{who}.password"
        if not path.exists():
            self.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        return path.read_text().splitlines()[0]

    def _make_tls(self) -> None:
        """CA, broker and client certificates (once per data dir)."""
        d = self.tls_dir
        if (d / "client.pem").exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        make_ca(d / "ca.key", d / "ca.pem", "streamrec broker CA")
        issue_cert(d / "ca.key", d / "ca.pem", d / "broker.key", d / "broker.pem", "localhost", server=True)
        issue_cert(d / "ca.key", d / "ca.pem", d / "client.key", d / "client.pem", CLIENT_USER, server=False)
        # Kafka's PEM key store: the (PKCS#8, unencrypted) key, then the certificate chain.
        keystore = d / "broker-keystore.pem"
        keystore.write_text(
            (d / "broker.key").read_text() + (d / "broker.pem").read_text() + (d / "ca.pem").read_text()
        )
        for p in d.iterdir():
            p.chmod(0o600)

    def _security_props(self) -> dict[str, str]:
        mode = self.mode
        if mode == "plaintext":
            return {}
        d = self.tls_dir
        props = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(d / "broker-keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(d / "ca.pem"),
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        }
        if mode in ("sasl_ssl", "both"):
            login = "org.apache.kafka.common.security.scram.ScramLoginModule required"
            jaas = f'{login} username="{BROKER_USER}" password="{self._password("broker")}";'
            props.update(
                {
                    "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
                    "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
                    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
                    "listener.name.sasl_ssl.ssl.client.auth": "none",
                }
            )
        if mode in ("mtls", "both"):
            props["listener.name.ssl.ssl.client.auth"] = "required"
        return props

    def client_security(self, mtls: bool | None = None) -> KafkaSecurity:
        """The `[kafka]` settings of a client of this broker: SCRAM-SHA-512 over SASL_SSL, or mutual
        TLS (`mtls`, default: when that is the broker's only listener)."""
        mode = self.mode
        if mode == "plaintext":
            return KafkaSecurity()
        d = self.tls_dir
        if mtls or (mtls is None and mode == "mtls"):
            return KafkaSecurity(
                security_protocol="SSL",
                ssl_cafile=str(d / "ca.pem"),
                ssl_certfile=str(d / "client.pem"),
                ssl_keyfile=str(d / "client.key"),
            )
        self._password("client")
        return KafkaSecurity(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=CLIENT_USER,
            sasl_password_file=str(d / "client.password"),
            ssl_cafile=str(d / "ca.pem"),
        )

    def client_env(self, mtls: bool | None = None) -> dict[str, str]:
        """STREAMREC_* variables that point a client at this broker (the password by its file)."""
        from recsys.config import section_env

        sec = self.client_security(mtls)
        defaults = section_env("kafka", KafkaSecurity())
        env = {k: v for k, v in section_env("kafka", sec).items() if defaults.get(k) != v}
        use_mtls = mtls or (mtls is None and self.mode == "mtls")
        return {ENV_BOOTSTRAP: self.mtls_bootstrap if use_mtls else self.bootstrap, **env}

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` seconds."""
        if self.external:
            return
        pid = self.pid
        if pid and self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(5.0)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=1)
            self._proc = None
        if self.state_file.exists():
            self._write_state(None)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(self.pid)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise BrokerError("openssl is needed to make the secured broker's certificates but is not on PATH")
    res = subprocess.run([exe, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed (rc={res.returncode}):\n{_tail(res.stderr, 10)}")


def make_ca(key: Path, cert: Path, name: str, days: int = 30) -> None:
    """A self-signed CA (EC P-256): `key`, `cert` (PEM)."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def issue_cert(ca_key: Path, ca_cert: Path, key: Path, cert: Path, name: str, *, server: bool, days: int = 30) -> None:
    """A certificate for `name` signed by the CA: a server's names 127.0.0.1 and localhost (what
    clients dial; the broker dials itself too, so it may also act as a client)."""
    csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    ext.write_text(f"extendedKeyUsage={usage}\n" + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""))
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", str(days), "-extfile", str(ext),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def new_cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64, as kafka-storage makes them. One that
    starts with '-' would be read as an option by the storage tool's parser, so draw again."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def default_data_dir(kafka_dir: str | None = None) -> Path:
    """The project's broker's data dir: `kafka_dir` (a configuration's ``ops.kafka_dir``), else
    the process's; relative to the working directory."""
    p = Path(kafka_dir if kafka_dir is not None else load_config().ops.kafka_dir).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def broker_from_env(data_dir: Path | None = None, config: Config | None = None, **kw) -> KafkaBroker:
    """A broker handle: the existing cluster the configuration names (``stream.bootstrap``,
    ``STREAMREC_BOOTSTRAP``; start/stop are then no-ops), else a managed broker in ``data_dir``."""
    cfg = config if config is not None else load_config()
    where = data_dir or default_data_dir(cfg.ops.kafka_dir)
    if cfg.stream.bootstrap:
        return KafkaBroker(data_dir=where, external=cfg.stream.bootstrap)
    return KafkaBroker(data_dir=where, **kw)


def resolve_bootstrap(explicit: str | None = None, config: Config | None = None) -> str:
    """Where Kafka is: `explicit`, else the configuration's ``stream.bootstrap`` (default: the
    process's), else the project's own running broker (``ops.kafka_dir``). Raises BrokerError
    saying how to get one."""
    if explicit:
        return explicit
    cfg = config if config is not None else load_config()
    if cfg.stream.bootstrap:
        return cfg.stream.bootstrap
    where = default_data_dir(cfg.ops.kafka_dir)
    own = KafkaBroker(data_dir=where)
    if own.state_file.exists() and own.is_running():
        return own.bootstrap
    raise BrokerError(
        f"no Kafka broker: start the project's own with `recsys broker start` "
        f"(data in {where}), or set {ENV_BOOTSTRAP}=host:port"
    )
