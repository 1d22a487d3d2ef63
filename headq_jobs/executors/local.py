"""The ``local`` executor: the job table is the queue, one spawned worker process per job.

A dispatcher thread in the server process, every ``poll_s`` seconds (or at once after a submit):
1. reaps its worker processes: a process that exited while its attempt is still running died
   (SIGKILL, OOM, crash) and its job is requeued or failed at once; a process whose attempt is no
   longer current (finished, requeued, cancelled) is stopped; a cancelled job's process is killed once
   its grace period is over;
2. requeues or fails jobs whose heartbeat went stale (workers of any server, including one that
   was restarted);
3. claims queued jobs while fewer than ``concurrency`` (one per GPU, 1 on CPU) workers run on this
   host, counted from the job table (running attempts of any local dispatcher here with a live
   heartbeat, so a worker that outlived a restarted server keeps its slot) and from its own
   processes. Each attempt's worker name ends with its slot (``local:HOST:PID:gpu3``, ``...:cpu``),
   so a new job never lands on a card that a surviving worker holds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from headq_jobs.executors.base import Loop
from headq_jobs.executors.gpus import gpu_ids
from headq_jobs.executors.settings import ExecutorSettings, check_timing
from headq_jobs.executors.spawn import settings_env, spawn_worker
from headq_jobs.settings import Settings
from headq_jobs.store.db import make_engine, make_session_factory, session_scope
from headq_jobs.store.jobs import (
    JobNotFound,
    claim_next_queued,
    finish,
    get_job,
    release_attempt,
    requeue_or_fail_stale,
    running_workers,
)
from headq_jobs.store.models import JobRow

log = logging.getLogger(__name__)


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    attempt: int
    device: str | None
    kill_at: float | None = None  # monotonic deadline of a requested cancel


class LocalExecutor:
    """Runs queued jobs in worker processes on this host (see the module docstring)."""

    def __init__(self, settings: Settings, options: ExecutorSettings | None = None,
                 log_dir: Path | None = None) -> None:
        self.options = options or ExecutorSettings()
        check_timing(self.options, settings.heartbeat_timeout_s)
        self.settings, self.log_dir = settings, log_dir
        self.devices = gpu_ids()
        self.concurrency = self.options.worker_concurrency or max(1, len(self.devices))
        self.host_prefix = f"local:{socket.gethostname()}:"
        self.name = f"{self.host_prefix}{os.getpid()}"
        self._factory = make_session_factory(make_engine(settings.database_url))
        self._env = settings_env(settings, self.options)
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._loop = Loop("headq-dispatcher", self.tick, self.options.poll_s)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """Stop dispatching. Running workers finish their jobs; a new server keeps watching them."""
        self._loop.stop()

    def submit(self, job_id: str) -> None:
        """The row is already queued; wake the dispatcher so it claims without waiting a poll."""
        self._loop.wake()

    def cancel(self, job_id: str) -> None:
        """The runner stops at its next window; kill its process if it has not after the grace."""
        with self._lock:
            child = self._children.get(job_id)
            if child is not None and child.kill_at is None:
                child.kill_at = time.monotonic() + self.options.cancel_grace_s
        self._loop.wake()

    def ready(self) -> tuple[bool, str]:
        if not self._loop.running:
            return False, "local executor: dispatcher not running"
        return True, f"local executor: {len(self._children)} of {self.concurrency} workers busy"

    def worker_pids(self) -> dict[str, int]:
        """Process id of the worker running each job this dispatcher started."""
        with self._lock:
            return {job_id: child.proc.pid for job_id, child in self._children.items()}

    def tick(self) -> None:
        """One dispatcher round (reap, recover stale jobs, claim and spawn)."""
        with self._lock, session_scope(self._factory) as session:
            for job_id in list(self._children):
                self._reap(session, job_id, self._children[job_id])
            for job_id, status in requeue_or_fail_stale(session, self.settings.heartbeat_timeout_s):
                log.warning("job %s: heartbeat stale, now %s", job_id, status)
            busy = self._busy_slots(session)
            while len(busy) < self.concurrency:
                device = next((d for d in self.devices if d not in busy.values()), None)
                job = claim_next_queued(session, f"{self.name}:{_slot(device)}")
                if job is None:
                    break
                busy[job.id] = device
                self._spawn(session, job, device)

    def _busy_slots(self, session: Session) -> dict[str, str | None]:
        """``{job id: device}`` of every worker alive on this host: from the job table (those of any
        local dispatcher here, a restarted one included) and this dispatcher's own processes."""
        alive = running_workers(session, self.host_prefix, self.settings.heartbeat_timeout_s)
        busy = {job_id: _device(worker) for job_id, worker in alive.items()}
        busy.update({job_id: child.device for job_id, child in self._children.items()})
        return busy

    def _spawn(self, session: Session, job: JobRow, device: str | None) -> None:
        try:
            proc = spawn_worker(job.id, job.attempts, self._env, device, self.log_dir)
        except OSError as exc:
            finish(session, job.id, "failed", f"could not start a worker process: {exc}",
                   attempt=job.attempts)
            return
        self._children[job.id] = _Child(proc, job.attempts, device)
        log.info("job %s attempt %d: worker pid %d on %s", job.id, job.attempts, proc.pid, device or "cpu")

    def _reap(self, session: Session, job_id: str, child: _Child) -> None:
        code = child.proc.poll()
        try:
            job = get_job(session, job_id)
        except JobNotFound:
            job = None
        current = job is not None and job.status == "running" and job.attempts == child.attempt
        if code is None:
            if not current:
                _kill(child.proc)  # its attempt was given up on: it may write nothing any more
            elif child.kill_at is not None and time.monotonic() >= child.kill_at:
                _kill(child.proc)
                finish(session, job_id, "cancelled",
                       f"cancelled: worker stopped after a {self.options.cancel_grace_s:g} s grace period",
                       attempt=child.attempt)
            return
        del self._children[job_id]
        if current:
            self._release_dead(session, job_id, child, code)

    def _release_dead(self, session: Session, job_id: str, child: _Child, code: int) -> None:
        """The worker exited without finishing its attempt: requeue or fail it now, by the same
        rules (and retry cap) as a stale heartbeat."""
        reason = f"worker process {child.proc.pid} exited with code {code} before finishing"
        status = release_attempt(session, job_id, child.attempt, reason)
        if status is not None:
            log.warning("job %s: worker pid %d exited with %d, now %s", job_id, child.proc.pid, code, status)


def _slot(device: str | None) -> str:
    """The last part of an attempt's worker name: the GPU it runs on, or ``cpu``."""
    return "cpu" if device is None else f"gpu{device}"


def _device(worker: str) -> str | None:
    """The GPU a running attempt holds, read back from its worker name (None: none or unknown)."""
    slot = worker.rsplit(":", 1)[-1]
    return slot[3:] if slot.startswith("gpu") else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker (and anything it started in its session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=10)
