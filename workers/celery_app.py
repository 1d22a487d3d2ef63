"""The Celery application of ``headq worker``: one task, ``headq.run_job(job_id)``.

The worker's main process imports torch and the pipeline once, before it forks its pool, so a
recycled pool process starts its job at once; it never initialises CUDA (importing torch does not),
which a forking parent must never do. Each pool child pins ``CUDA_VISIBLE_DEVICES`` to one GPU,
chosen by its pool index, which a recycled child inherits from the one it replaces. ``celery -A
workers.celery_app ...`` finds :data:`app`, configured from ``HEADQ_*`` at import.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from celery import Celery
from celery.signals import worker_init, worker_process_init
from celery.utils.log import current_process_index

from headq_jobs.executors.celery_config import TASK_NAME, celery_config
from headq_jobs.executors.gpus import gpu_ids
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import get_settings
from workers.run_job import run_job


def make_celery(broker_url: str, options: ExecutorSettings) -> Celery:
    """A Celery app with the shared JSON / late-ack configuration and the run_job task."""
    celery = Celery("headq")
    celery.conf.update(celery_config(broker_url, queue=options.queue,
                                     max_tasks_per_child=options.worker_max_tasks))
    celery.task(name=TASK_NAME, ignore_result=True)(_run_job_task)
    return celery


def _run_job_task(job_id: str) -> None:
    """Run one job by id (the message carries data, never code)."""
    run_job(job_id)


def pin_gpu(index: int | None, devices: list[str], environ: MutableMapping[str, str]) -> str | None:
    """Give pool child ``index`` one device of ``devices`` (None on a CPU-only host)."""
    if not devices or index is None:
        return None
    device = devices[index % len(devices)]
    environ["CUDA_VISIBLE_DEVICES"] = device
    return device


@worker_init.connect
def _preload_core(**_: object) -> None:
    """Import torch + transformers in the parent (seconds) instead of in every recycled child."""
    import torch

    import workers.pipeline  # noqa: F401 - imported for its side effect: modules loaded before fork

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised in the Celery parent; pool processes could not use it")


@worker_process_init.connect
def _pin_child_gpu(**_: object) -> None:
    pin_gpu(current_process_index(base=0), _DEVICES, os.environ)


_DEVICES = gpu_ids()  # read once in the parent, before any child is forked
app = make_celery(get_settings().broker_url, ExecutorSettings())
