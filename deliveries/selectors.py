"""Reads of orders and deliveries that more than one caller needs, with their joins done once."""

from __future__ import annotations

from datetime import datetime, time

from django.db.models import Q, QuerySet
from django.utils import timezone

from deliveries.models import Center, Delivery, Order, Shop


def start_of_today() -> datetime:
    """Local midnight (settings.TIME_ZONE): the operations day starts there."""
    return timezone.make_aware(datetime.combine(timezone.localdate(), time.min))


def deliveries_with_related() -> QuerySet[Delivery]:
    return Delivery.objects.select_related("order", "center", "shop", "rider")


def todays_deliveries(*, center_code: str, status: str | None = None) -> QuerySet[Delivery]:
    """Today's deliveries of a center plus any still open from before, newest first."""
    deliveries = deliveries_with_related().filter(center__code=center_code)
    deliveries = deliveries.filter(Q(created_at__gte=start_of_today()) | Q(status__in=Delivery.OPEN_STATUSES))
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries.order_by("-created_at", "-pk")


def todays_orders(*, center_code: str) -> QuerySet[Order]:
    """Today's orders of a center plus any still open from before, newest first."""
    orders = Order.objects.select_related("center", "shop", "delivery").filter(center__code=center_code)
    orders = orders.filter(Q(created_at__gte=start_of_today()) | Q(delivery__status__in=Delivery.OPEN_STATUSES))
    return orders.order_by("-created_at", "-pk")


def delivery_with_timeline(delivery_id: int) -> Delivery | None:
    return deliveries_with_related().prefetch_related("timeline").filter(pk=delivery_id).first()


def order_with_delivery(order_id: int) -> Order | None:
    return (
        Order.objects.select_related("center", "shop", "delivery__center", "delivery__shop", "delivery__rider")
        .filter(pk=order_id)
        .first()
    )


def centers_by_code(codes: list[str]) -> QuerySet[Center]:
    return Center.objects.filter(code__in=codes).order_by("code")


def active_shops(*, center_code: str) -> QuerySet[Shop]:
    return Shop.objects.filter(center__code=center_code, is_active=True).order_by("name")


def shop_by_id(shop_id: int) -> Shop | None:
    return Shop.objects.select_related("center").filter(pk=shop_id).first()
