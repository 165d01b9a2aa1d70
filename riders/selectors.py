"""Reads of riders that more than one caller needs."""

from django.db.models import QuerySet

from riders.models import Rider


def center_riders(center_code: str) -> QuerySet[Rider]:
    """Every rider of a center, on duty or not, by name: the riders panel, its stream and its API."""
    return Rider.objects.filter(center__code=center_code).select_related("center").order_by("name", "pk")


def rider_by_id(rider_id: int) -> Rider | None:
    return Rider.objects.select_related("center").filter(pk=rider_id).first()
