"""Admin for centers, staff roles and users, and the pieces every app's admin shares.

State owned by services is browse-only (`ReadOnlyAdmin`); admin actions call the services as the
acting admin and report each refusal (`run_each`) instead of failing the whole batch; add and
change forms whose model a service owns save through it (`ServiceSaveAdmin`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError

from core import services
from core.access_versions import access_changed
from core.exceptions import CommandRefused
from core.models import Center, StaffProfile

HELP_CHANGE_LIST_TEMPLATE = "admin/bros/change_list_with_help.html"

# What a service may refuse with; anything else is a bug and should surface as one.
REFUSALS = (CommandRefused, PermissionDenied, ValidationError, ObjectDoesNotExist)


def refusal_message(exc: Exception) -> str:
    """Return the service's own words for why a command was refused."""
    if isinstance(exc, CommandRefused):
        return exc.message
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    if isinstance(exc, ObjectDoesNotExist):
        return "It no longer exists."
    return str(exc) or "You are not allowed to do this."


def run_each(
    model_admin: admin.ModelAdmin,
    request,
    objects: Iterable,
    command: Callable,
    *,
    label: Callable = str,
    done: str,
) -> int:
    """Run `command(obj)` for each object and report every refusal and the successes by name.

    Each command is its own transaction, so one refusal leaves the others done.
    """
    succeeded = []
    for obj in objects:
        try:
            command(obj)
        except REFUSALS as exc:
            model_admin.message_user(request, f"{label(obj)}: {refusal_message(exc)}", messages.ERROR)
        else:
            succeeded.append(label(obj))
    if succeeded:
        model_admin.message_user(request, f"{done}: {', '.join(succeeded)}.", messages.SUCCESS)
    return len(succeeded)


class SaveRefused(Exception):
    """A service refused the save of an admin form; the message says why."""


class ServiceSaveAdmin(admin.ModelAdmin):
    """An admin whose add and change forms save through a service, called in `save_model`.

    A refusal rolls the whole save back (the admin's log entry too) and shows the form again with
    what was typed and the service's own words, instead of reporting a save that did not happen.
    """

    def save_through(self, command: Callable):
        """Run the service `command()` and return what it saved; turn a refusal into `SaveRefused`."""
        try:
            return command()
        except REFUSALS as exc:
            raise SaveRefused(refusal_message(exc)) from exc

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except SaveRefused as exc:  # raised inside the admin's transaction, which is rolled back
            # Render the same POST again, with the refusal as the form's error (see get_form).
            request.bros_save_refused = str(exc)
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        refusal = getattr(request, "bros_save_refused", None)
        if refusal is None:
            return form

        class RefusedForm(form):
            def clean(self):
                super().clean()
                raise forms.ValidationError(refusal)

        return RefusedForm


class HelpChangeListMixin:
    """Show `changelist_help` above a change list (why it is read-only, where changes are made)."""

    change_list_template = HELP_CHANGE_LIST_TEMPLATE
    changelist_help = ""

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"changelist_help": self.changelist_help, **(extra_context or {})})


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browse-only: no adding, editing or deleting (views of state owned by services)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Center)
class CenterAdmin(ServiceSaveAdmin):
    list_display = ["code", "name", "lat", "lng"]
    search_fields = ["code", "name"]
    readonly_fields = ["version"]

    def get_readonly_fields(self, request, obj=None):
        # The code names the center's streams and pages: fixed once the center exists.
        readonly = list(super().get_readonly_fields(request, obj))
        return [*readonly, "code"] if obj is not None else readonly

    def save_model(self, request, obj: Center, form, change: bool) -> None:
        saved = self.save_through(
            lambda: services.save_center(
                actor=request.user,
                center_id=obj.pk if change else None,
                code=obj.code,
                name=obj.name,
                lat=obj.lat,
                lng=obj.lng,
            )
        )
        obj.pk, obj.version = saved.pk, saved.version


class StaffProfileForm(forms.ModelForm):
    class Meta:
        model = StaffProfile
        fields = ["user", "role", "centers"]
        help_texts = {"centers": "Leave empty for HQ admins: they work for every center."}


@admin.register(StaffProfile)
class StaffProfileAdmin(admin.ModelAdmin):
    form = StaffProfileForm
    list_display = ["user", "full_name", "role", "center_list"]
    list_filter = ["role", "centers"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__first_name", "user__last_name"]
    autocomplete_fields = ["user"]
    filter_horizontal = ["centers"]
    ordering = ["user__username"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("centers")

    # Open sockets re-check their streams at the next heartbeat (core.access_versions). After the
    # related save: the centers are saved with the form's many-to-many data.
    def save_related(self, request, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        access_changed(form.instance.user_id)

    def delete_model(self, request, obj: StaffProfile) -> None:
        super().delete_model(request, obj)
        access_changed(obj.user_id)

    def delete_queryset(self, request, queryset) -> None:
        user_ids = list(queryset.values_list("user_id", flat=True))
        super().delete_queryset(request, queryset)
        access_changed(*user_ids)

    @admin.display(description="Name", ordering="user__first_name")
    def full_name(self, profile: StaffProfile) -> str:
        return profile.user.get_full_name()

    @admin.display(description="Centers")
    def center_list(self, profile: StaffProfile) -> str:
        codes = ", ".join(center.code for center in profile.centers.all())
        if not codes and profile.role == StaffProfile.Role.HQ:
            return "all (HQ)"
        return codes


class StaffProfileInline(admin.StackedInline):
    model = StaffProfile
    form = StaffProfileForm
    fields = ["role", "centers"]
    filter_horizontal = ["centers"]
    can_delete = True
    max_num = 1
    verbose_name = verbose_name_plural = "role and centers"


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class BrosUserAdmin(UserAdmin):
    """Django's user admin plus the user's role and centers."""

    inlines = [StaffProfileInline]
    list_display = [*UserAdmin.list_display, "role"]
    list_filter = [*UserAdmin.list_filter, "staff__role"]
    list_select_related = ["staff"]

    # A user's activity, role and centers (the inline) change here: open sockets re-check at the
    # next heartbeat (core.access_versions), and a deactivated or deleted user's sockets close.
    def save_related(self, request, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        access_changed(form.instance.pk)

    def delete_model(self, request, obj) -> None:
        user_id = obj.pk
        super().delete_model(request, obj)
        access_changed(user_id)

    def delete_queryset(self, request, queryset) -> None:
        user_ids = list(queryset.values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        access_changed(*user_ids)

    def get_inline_instances(self, request, obj=None):
        # Django's two-step user creation: the role is set on the change page that follows.
        return super().get_inline_instances(request, obj) if obj is not None else []

    @admin.display(description="Role", ordering="staff__role")
    def role(self, user) -> str:
        profile = getattr(user, "staff", None)
        return profile.get_role_display() if profile else "—"
