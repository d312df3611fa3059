"""What the soak runs against and controls: the simulators and their sources, its own
PostgreSQL, and the daemon as a subprocess (killed, restarted, its disk filled, its RSS
sampled, its log kept)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psutil

from etl.sim.base import Simulator
from etl.sim.bittap import BittapSimulator
from etl.sim.htx import HtxSimulator
from etl.sim.ltp import LtpSimulator, demo_sources
from etl.sim.serve import SimServer
from etl.sim.treadfi import TreadfiSimulator

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = timedelta(seconds=4)
SLOW_INTERVAL = timedelta(seconds=5)  # Tread.fi's: two intervals, two claim batches per instant
REQUEST_TIMEOUT = 1.5  # seconds per read: a drip at one byte a second never trips it, a 2.5 s delay does


@dataclass
class World:
    """The soak's sources: per venue a simulator; per source its interval and credentials."""

    sims: dict[str, Simulator] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)  # [[sources]] tables
    env: dict[str, str] = field(default_factory=dict)  # the secrets the config references
    keys: dict[str, str] = field(default_factory=dict)  # source -> the API key it sends
    intervals: dict[str, timedelta] = field(default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        """Every credential value, as the venue expects it (the env may add a newline)."""
        return sorted({value.strip() for value in self.env.values()})

    def credentials(self, name: str, *, signed: bool = True, newline: bool = False) -> dict[str, str]:
        """Fresh random credentials for source `name`, put in the environment the config names."""
        var = "SOAK_" + name.upper().replace("-", "_")
        key, secret = f"soak-{name}-key-{secrets.token_hex(8)}", f"soak-{name}-secret-{secrets.token_hex(8)}"
        # A mounted secret often ends in a newline: the daemon must strip it, not send or leak it.
        self.env[f"{var}_KEY"] = key + ("\n" if newline else "")
        self.keys[name] = key
        refs = {"api_key": f"env:{var}_KEY"}
        if signed:
            self.env[f"{var}_SECRET"] = secret
            refs["api_secret"] = f"env:{var}_SECRET"
        return refs

    def add(self, name: str, venue: str, refs: dict[str, str], **extra: Any) -> None:
        interval = extra.pop("interval", INTERVAL)
        self.intervals[name] = interval
        self.entries.append({"name": name, "venue": venue, **refs, **extra, "interval": interval})

    def secret_of(self, refs: dict[str, str]) -> str:
        return self.env[refs["api_secret"][4:]]


def build_world() -> World:
    world = World()
    bittap = world.sims["bittap"] = BittapSimulator(seed=7)
    for i, wallet in enumerate(("25000.5", "8200.125")):
        name = f"bittap-{'ab'[i]}"
        refs = world.credentials(name, newline=i == 0)
        bittap.add_account(world.keys[name], world.secret_of(refs), wallet=wallet, positions=2 + i)
        world.add(name, "bittap", refs)
    htx = world.sims["htx"] = HtxSimulator(seed=3)
    for i, (wallet, btc) in enumerate((("41000.25", None), ("12500.5", "0.75"))):
        name = f"htx-{'ab'[i]}"
        refs = world.credentials(name)
        htx.add_account(world.keys[name], world.secret_of(refs), wallet=wallet, btc=btc, positions=2 + i)
        world.add(name, "htx", refs)
    ltp = world.sims["ltp"] = LtpSimulator(seed=11)
    for demo in demo_sources():
        name = demo.name.replace("demo-", "")
        refs = world.credentials(name)
        ltp.add_user(world.keys[name], world.secret_of(refs)).wallets.extend(demo.wallets)
        world.add(name, "ltp", refs, **({"params": demo.params} if demo.params else {}))
    treadfi = world.sims["treadfi"] = TreadfiSimulator(seed=13)
    refs = world.credentials("treadfi-desk", signed=False)
    for account, exchange, wallet in (
        ("DeskBybit", "Bybit", "18250.75"),
        ("DeskBinance", "Binance", "9400.5"),
    ):
        treadfi.add_account(world.keys["treadfi-desk"], account, exchange, wallet=wallet, positions=2, spot=1)
    world.add("treadfi-desk", "treadfi", refs, interval=SLOW_INTERVAL)
    return world


def _toml(value: Any) -> str:
    if isinstance(value, timedelta):
        return f'"{value.total_seconds():g}s"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_config(path: Path, world: World, urls: dict[str, str]) -> None:
    lines = ["[schedule]", f'interval = "{INTERVAL.total_seconds():g}s"', f'timeout = "{REQUEST_TIMEOUT:g}s"']
    for entry in world.entries:
        lines += ["", "[[sources]]", *(f"{k} = {_toml(v)}" for k, v in entry.items())]
        lines.append(f"base_url = {_toml(urls[entry['venue']])}")
    path.write_text("\n".join(lines) + "\n")


def serve(sims: dict[str, Simulator]) -> dict[str, SimServer]:
    return {venue: SimServer(sim.app()).start() for venue, sim in sims.items()}


class EmbeddedPostgres:
    """A pgserver data dir of the soak's own, started and stopped with pg_ctl as a fault."""

    def __init__(self, root: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # platformdirs, as in etl.store.engine
            import pgserver
        self._pgserver = pgserver
        self.pgdata = root / "pgdata"
        self.server = pgserver.get_server(self.pgdata, cleanup_mode=None)  # we stop it ourselves
        self.url = str(self.server.get_uri("postgres"))
        self.socket_dir = parse_qs(urlparse(self.url).query)["host"][0]

    def _ctl(self, *args: str) -> None:
        self._pgserver.pg_ctl(  # type: ignore[attr-defined]
            ["-w", *args], pgdata=self.pgdata, user=self.server.system_user, timeout=30
        )

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def start(self) -> None:
        self._ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped already
            self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Generation:
    """One daemon process: when it started, became ready and ended, and how."""

    pid: int
    started: float
    ready: float | None = None
    ended: float | None = None
    killed: bool = False  # by the soak, with SIGKILL
    returncode: int | None = None


class DaemonProcess:
    """`python -m etl daemon` as a subprocess; its stderr+stdout kept line by line."""

    def __init__(self, config: Path, env: dict[str, str], metrics_port: int, log_path: Path):
        self.command = [sys.executable, "-m", "etl", "daemon", "--config", str(config)]
        self.command += ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
        self.env, self.log_path = env, log_path
        self.generations: list[Generation] = []
        self.lines: list[tuple[int, str]] = []  # (generation, line)
        self.rss_peak_mb = 0.0
        self.rss_samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._disk_full = False
        self._lock = threading.Lock()
        self._stop_sampling = threading.Event()
        threading.Thread(target=self._sample_rss, daemon=True, name="soak-rss").start()

    def start(self) -> None:
        proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        with self._lock:
            self._proc = proc
            self.generations.append(Generation(proc.pid, time.time()))
            number = len(self.generations) - 1
        if self._disk_full:
            self.fill_disk(True)
        threading.Thread(target=self._read, args=(proc, number), daemon=True, name="soak-log").start()

    def _read(self, proc: subprocess.Popen[str], number: int) -> None:
        assert proc.stdout is not None
        with self.log_path.open("a") as log:
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(f"[{number}] {line}\n")
                self.lines.append((number, line))
                if '"event": "started"' in line and self.generations[number].ready is None:
                    self.generations[number].ready = time.time()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.generations[-1].ready is not None:
                return True
            if self.exited() is not None:
                return False
            time.sleep(0.05)
        return False

    def exited(self) -> int | None:
        """The return code if the current process ended on its own (recorded), else None."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        generation = self.generations[-1]
        if generation.killed:
            return None
        if generation.ended is None:
            generation.ended, generation.returncode = time.time(), proc.returncode
        return proc.returncode

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        generation = self.generations[-1]
        generation.ended, generation.killed, generation.returncode = time.time(), True, self._proc.returncode

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the return code, or None if it did not exit within `timeout` (then killed)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            code = None
        generation = self.generations[-1]
        generation.ended, generation.returncode = time.time(), code
        self._stop_sampling.set()
        return code

    def fill_disk(self, full: bool) -> None:
        """The spool's disk full, as the daemon sees it: RLIMIT_FSIZE 0 makes each write to a
        regular file fail (EFBIG; CPython ignores SIGXFSZ), as root and as a plain user, with
        no mount; the log is a pipe, so only the spool is hit. Lifted again, the disk has room."""
        self._disk_full = full
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        with contextlib.suppress(ProcessLookupError):  # it just ended: the next one gets the limit at start
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0 if full else hard, hard))

    def _sample_rss(self) -> None:
        while not self._stop_sampling.wait(0.5):
            proc = self._proc
            if proc is None or proc.poll() is not None:
                continue
            try:
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.rss_samples.append(rss)
            self.rss_peak_mb = max(self.rss_peak_mb, rss)


def daemon_env(world: World, data_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(world.env)
    env.update(ETL_DATA_DIR=str(data_dir), ETL_DATABASE_URL=database_url, ETL_LOG_FORMAT="json")
    return env
