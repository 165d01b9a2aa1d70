"""The Celery application: the worker runs domain tasks, beat runs the periodic ones.

Both heart-beat into presence (realtime.presence.ThreadHeartbeat), so the ops monitor shows
their health, CPU and memory, and flags one that stops. A task's log lines carry its id in the
request-id field (core.log_context), as a request's do.
"""

import atexit
import os

from celery import Celery
from celery.signals import beat_init, task_postrun, task_prerun, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")

app = Celery("bros")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_heartbeats = {}


def _start_heartbeat(kind: str) -> None:
    from realtime.presence import ThreadHeartbeat

    if kind not in _heartbeats:
        _heartbeats[kind] = ThreadHeartbeat(kind).start()


def _stop_heartbeat(kind: str) -> None:
    heartbeat = _heartbeats.pop(kind, None)
    if heartbeat is not None:
        heartbeat.stop()


@worker_ready.connect
def _worker_presence(**kwargs) -> None:
    _start_heartbeat("worker")


@worker_shutdown.connect
def _worker_gone(**kwargs) -> None:
    _stop_heartbeat("worker")


@beat_init.connect
def _beat_presence(**kwargs) -> None:
    _start_heartbeat("beat")
    atexit.register(_stop_heartbeat, "beat")  # beat has no shutdown signal


@task_prerun.connect
def _task_log_context(task_id=None, **kwargs) -> None:
    from core.log_context import request_id

    request_id.set(f"task-{task_id}")


@task_postrun.connect
def _task_log_context_end(**kwargs) -> None:
    from core.log_context import request_id

    request_id.set(None)
