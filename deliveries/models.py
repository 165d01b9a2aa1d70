"""Shops, orders, deliveries and their timelines."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import Center


class Shop(models.Model):
    center = models.ForeignKey(Center, on_delete=models.PROTECT, related_name="shops")
    name = models.CharField(max_length=100)
    address = models.CharField(max_length=200)
    phone = models.CharField(max_length=30, blank=True)
    lat = models.FloatField()
    lng = models.FloatField()
    prep_minutes = models.PositiveSmallIntegerField(default=15, help_text="Usual time until an order is ready")
    is_active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["center__code", "name"]
        constraints = [models.UniqueConstraint(fields=["center", "name"], name="shop_unique_name_per_center")]

    def __str__(self) -> str:
        return self.name


class Source(models.TextChoices):
    """Where a change came from, as shown in timelines."""

    CALLCENTER = "callcenter", "Call center"
    DISPATCHER = "dispatcher", "Dispatcher"
    RIDER = "rider", "Rider"
    API = "api", "API"
    SYSTEM = "system", "System"
    ADMIN = "admin", "Admin"


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        DELIVERED = "delivered", "Delivered"
        CANCELLED = "cancelled", "Cancelled"

    center = models.ForeignKey(Center, on_delete=models.PROTECT, related_name="orders")
    shop = models.ForeignKey(Shop, on_delete=models.PROTECT, related_name="orders")
    customer_name = models.CharField(max_length=100)
    customer_phone = models.CharField(max_length=30, db_index=True)
    address = models.CharField(max_length=200)
    lat = models.FloatField(null=True, blank=True)
    lng = models.FloatField(null=True, blank=True)
    items = models.JSONField(default=list, help_text='[{"name": "Fried chicken", "qty": 2}, …]')
    note = models.CharField(max_length=500, blank=True)
    promised_at = models.DateTimeField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLACED)
    cancel_reason = models.CharField(max_length=200, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["center", "-created_at"], name="order_center_recent")]

    def __str__(self) -> str:
        return f"#{self.pk}"


class Delivery(models.Model):
    """The delivery of one order: waiting → assigned → picked_up → delivered, or cancelled."""

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        ASSIGNED = "assigned", "Assigned"
        PICKED_UP = "picked_up", "Picked up"
        DELIVERED = "delivered", "Delivered"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATUSES = (Status.WAITING, Status.ASSIGNED, Status.PICKED_UP)
    ACTIVE_STATUSES = (
        Status.ASSIGNED,
        Status.PICKED_UP,
    )  # count towards a rider's load

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="delivery")
    center = models.ForeignKey(Center, on_delete=models.PROTECT, related_name="deliveries")
    shop = models.ForeignKey(Shop, on_delete=models.PROTECT, related_name="deliveries")
    rider = models.ForeignKey(
        "riders.Rider",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="deliveries",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.WAITING)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    picked_up_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["center", "-created_at"], name="delivery_center_recent"),
            models.Index(fields=["center", "status"], name="delivery_center_status"),
            models.Index(fields=["rider", "status"], name="delivery_rider_status"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="waiting", rider__isnull=True)
                | Q(
                    status__in=["assigned", "picked_up", "delivered"],
                    rider__isnull=False,
                )
                | Q(status="cancelled"),
                name="delivery_rider_matches_status",
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery of order #{self.order_id}"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES


class TimelineEntry(models.Model):
    """One change of a delivery or its order: who, when, from → to, and through which channel."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="timeline")
    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150, help_text="Who, as shown (kept if the user is deleted)")
    source = models.CharField(max_length=20, choices=Source.choices)
    action = models.CharField(max_length=40)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    # The delivery's version after this change: the shift replay shows it as it was. Null only on
    # entries written before it was recorded (migration 0006 backfilled those it could).
    version = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["at", "pk"]
        verbose_name_plural = "timeline entries"
        # The replay's event list (a center's changes in a window before a moment) and retention.
        indexes = [models.Index(fields=["at"], name="timeline_at")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_label}"
