"""Retention: delete old rows in small batches, so no delete holds locks or bloats one transaction."""

from __future__ import annotations

from django.db.models import QuerySet


def delete_in_batches(queryset: QuerySet, *, batch: int = 5000) -> int:
    """Delete every row of `queryset`, `batch` ids at a time; return how many went."""
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += queryset.model.objects.filter(pk__in=ids).delete()[0]
