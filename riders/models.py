"""Riders, their duty status and load, and their positions."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Rider(models.Model):
    class Vehicle(models.TextChoices):
        MOTORCYCLE = "motorcycle", "Motorcycle"
        BICYCLE = "bicycle", "Bicycle"
        CAR = "car", "Car"
        WALK = "walk", "On foot"

    class Status(models.TextChoices):
        OFFLINE = "offline", "Off duty"
        AVAILABLE = "available", "Available"
        BUSY = "busy", "Busy"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rider")
    center = models.ForeignKey("core.Center", on_delete=models.PROTECT, related_name="riders")
    name = models.CharField(max_length=100)
    phone = models.CharField(max_length=30, blank=True)
    vehicle = models.CharField(max_length=20, choices=Vehicle.choices, default=Vehicle.MOTORCYCLE)
    on_duty = models.BooleanField(default=False)
    # Active (assigned or picked-up) deliveries; kept by the delivery services under the rider's lock.
    load = models.PositiveIntegerField(default=0)
    version = models.PositiveIntegerField(default=1)
    # Who changed duty or load last, for stale-version refusals ("changed by … at …").
    changed_by = models.CharField(max_length=150, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)
    last_lat = models.FloatField(null=True, blank=True)
    last_lng = models.FloatField(null=True, blank=True)
    last_accuracy = models.FloatField(null=True, blank=True)
    last_position_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["center__code", "name"]
        constraints = [models.CheckConstraint(condition=Q(load__gte=0), name="rider_load_not_negative")]

    def __str__(self) -> str:
        return self.name

    @property
    def status(self) -> str:
        if not self.on_duty:
            return self.Status.OFFLINE
        return self.Status.BUSY if self.load else self.Status.AVAILABLE


class PositionSample(models.Model):
    """Sampled GPS history (the live latest position is on Rider and in Redis)."""

    rider = models.ForeignKey(Rider, on_delete=models.CASCADE, related_name="positions")
    lat = models.FloatField()
    lng = models.FloatField()
    accuracy = models.FloatField(null=True, blank=True)
    heading = models.FloatField(null=True, blank=True)
    speed = models.FloatField(null=True, blank=True)
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["-recorded_at"]
        indexes = [
            models.Index(fields=["rider", "-recorded_at"], name="position_rider_recent"),
            models.Index(fields=["recorded_at"], name="position_recorded_at"),  # retention's delete
        ]

    def __str__(self) -> str:
        return f"{self.rider} at {self.recorded_at:%H:%M:%S}"
