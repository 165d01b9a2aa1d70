"""Admin for riders (profiles saved through `create_rider` / `update_rider_profile`, shifts through
`set_rider_duty`) and GPS history."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from core.admin import ReadOnlyAdmin, ServiceSaveAdmin, run_each
from riders import services
from riders.models import PositionSample, Rider

PROFILE_FIELDS = ["user", "center", "name", "phone", "vehicle"]


class RiderForm(forms.ModelForm):
    class Meta:
        model = Rider
        fields = PROFILE_FIELDS

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk and "center" in self.changed_data:
            # Only to show the error beside the field: `update_rider_profile` re-checks under its lock.
            current = Rider.objects.select_for_update(no_key=True).get(pk=self.instance.pk)
            if current.on_duty:
                self.add_error("center", "End the rider's shift before moving them to another center.")
        return cleaned


@admin.register(Rider)
class RiderAdmin(ServiceSaveAdmin):
    form = RiderForm
    list_display = ["name", "center", "status", "on_duty", "load", "vehicle", "phone", "last_position_at"]
    list_filter = ["center", "on_duty", "vehicle"]
    list_select_related = ["center"]
    search_fields = ["name", "phone", "user__username"]
    autocomplete_fields = ["user"]
    actions = ["start_shift", "end_shift"]
    fieldsets = [
        (None, {"fields": PROFILE_FIELDS}),
        (
            "Live state (changed by shifts and deliveries, not here)",
            {"fields": ["on_duty", "load", "version", "last_lat", "last_lng", "last_accuracy", "last_position_at"]},
        ),
    ]
    readonly_fields = ["on_duty", "load", "version", "last_lat", "last_lng", "last_accuracy", "last_position_at"]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            readonly.append("user")
            # Moving an on-duty rider would strand their board and their deliveries in the old center.
            if obj.on_duty:
                readonly.append("center")
        return readonly

    def save_model(self, request, obj: Rider, form, change: bool) -> None:
        profile = {"name": obj.name, "phone": obj.phone, "vehicle": obj.vehicle, "center_id": obj.center_id}
        if change:
            saved = self.save_through(
                lambda: services.update_rider_profile(actor=request.user, rider_id=obj.pk, **profile)
            )
        else:
            saved = self.save_through(lambda: services.create_rider(actor=request.user, user_id=obj.user_id, **profile))
        obj.pk, obj.version = saved.pk, saved.version

    @admin.display(description="Status")
    def status(self, rider: Rider) -> str:
        return Rider.Status(rider.status).label

    def _set_duty(self, request, queryset, on_duty: bool, done: str) -> None:
        run_each(
            self,
            request,
            queryset.order_by("pk"),
            lambda rider: services.set_rider_duty(actor=request.user, rider_id=rider.pk, on_duty=on_duty),
            done=done,
        )

    @admin.action(description="Start shift", permissions=["change"])
    def start_shift(self, request, queryset):
        self._set_duty(request, queryset, True, "Shift started")

    @admin.action(description="End shift", permissions=["change"])
    def end_shift(self, request, queryset):
        self._set_duty(request, queryset, False, "Shift ended")


@admin.register(PositionSample)
class PositionSampleAdmin(ReadOnlyAdmin):
    list_display = ["recorded_at", "rider", "lat", "lng", "accuracy", "heading", "speed"]
    list_filter = ["rider__center", "recorded_at"]
    list_select_related = ["rider"]
    date_hierarchy = "recorded_at"
    search_fields = ["rider__name"]
    show_full_result_count = False
