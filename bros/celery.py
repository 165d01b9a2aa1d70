"""The Celery application: the worker runs domain tasks, beat runs the periodic ones."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bros.settings")

app = Celery("bros")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
