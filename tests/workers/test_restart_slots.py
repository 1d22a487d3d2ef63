"""A local worker that outlives its server keeps its slot. The server (its dispatcher) stops, the
worker goes on; a new dispatcher on the same database counts the running attempts from the job table
(live heartbeats), not from its own memory: on a one-slot host it starts nothing until the survivor
ends, and on a two-GPU host it puts the next job on the other card, never on the survivor's."""

from __future__ import annotations

from pathlib import Path

from headq_jobs.executors import LocalExecutor
from headq_jobs.store import cancel_job
from tests.workers.conftest import ENDLESS_JOB, add_job
from tests.workers.waiting import job_row, wait_for, wait_started, wait_status


def survivor(settings, options, sessions, spec, tmp_path, reap) -> str:
    """A job whose worker keeps running after its dispatcher stopped (a killed server); its id."""
    with sessions() as s:
        job = add_job(s, spec)
    server = LocalExecutor(settings, options, log_dir=tmp_path)
    server.start()
    wait_started(sessions, job.id, 120, tmp_path)
    server.stop()
    reap(server.worker_pids()[job.id])
    return job.id


def test_a_new_dispatcher_waits_for_the_slot_a_surviving_worker_holds(settings, options, sessions, make_spec,
                                                                       tmp_path, reap) -> None:
    first = survivor(settings, options, sessions, make_spec(**ENDLESS_JOB), tmp_path, reap)
    with sessions() as s:
        second = add_job(s, make_spec())
    restarted = LocalExecutor(settings, options, log_dir=tmp_path)
    restarted.tick()
    started = restarted.worker_pids()
    for pid in started.values():
        reap(pid)
    assert started == {} and job_row(sessions, second.id).status == "queued"

    with sessions() as s:
        cancel_job(s, first)  # the survivor stops at its next window and frees the slot
    wait_status(sessions, first, ("cancelled",), 60, tmp_path)
    restarted.tick()
    reap(restarted.worker_pids()[second.id])
    assert wait_status(sessions, second.id, ("succeeded", "failed"), 120, tmp_path).status == "succeeded"


def test_a_new_dispatcher_never_puts_a_job_on_the_card_a_surviving_worker_holds(
        settings, options, sessions, make_spec, tmp_path, reap, monkeypatch) -> None:
    """Two visible GPUs (the jobs themselves run on the CPU): the survivor holds the first card."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    per_gpu = options.model_copy(update={"worker_concurrency": None})
    survivor(settings, per_gpu, sessions, make_spec(**ENDLESS_JOB), tmp_path, reap)
    with sessions() as s:
        second, third = add_job(s, make_spec(**ENDLESS_JOB)), add_job(s, make_spec())
    restarted = LocalExecutor(settings, per_gpu, log_dir=tmp_path)
    restarted.tick()
    pids = restarted.worker_pids()
    for pid in pids.values():
        reap(pid)
    assert list(pids) == [second.id] and job_row(sessions, third.id).status == "queued"

    def device() -> str | None:
        """The new worker's CUDA_VISIBLE_DEVICES, once it has exec'd (before, /proc shows ours)."""
        proc = Path(f"/proc/{pids[second.id]}")
        if b"workers.local_worker" not in (proc / "cmdline").read_bytes():
            return None
        items = (proc / "environ").read_bytes().split(b"\0")
        return dict(item.split(b"=", 1) for item in items if b"=" in item)[b"CUDA_VISIBLE_DEVICES"].decode()
    assert wait_for(device, 60, "the new worker to start") == "5"
