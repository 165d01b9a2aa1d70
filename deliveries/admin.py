"""Admin for shops, orders, deliveries and timelines.

Orders, deliveries and timelines are browse-only: their state belongs to the services
(conventions §2), so the admin changes them only through actions that call those services, as
the acting admin, and reports each refusal instead of failing the whole batch.
"""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from core.admin import HelpChangeListMixin, ReadOnlyAdmin, ServiceSaveAdmin, run_each
from deliveries import services
from deliveries.models import Delivery, Order, Shop, Source, TimelineEntry
from deliveries.selectors import phone_digits_match

ORDER_NUMBER = re.compile(r"^#?\s*([0-9]{1,18})$")


def order_number(term: str) -> int | None:
    """Return the order number typed as "123" or "#123", or None."""
    match = ORDER_NUMBER.match(term.strip())
    return int(match[1]) if match else None


class OrderSearchMixin:
    """Search also by order number ("123" or "#123") and by phone digits, whatever the dashes."""

    order_number_field = "pk"
    phone_field: str | None = None

    def get_search_results(self, request, queryset, search_term):
        unsearched = queryset
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        extra = Q()
        number = order_number(search_term)
        if number is not None:
            extra |= Q(**{self.order_number_field: number})
        phone = phone_digits_match(self.phone_field, search_term) if self.phone_field else None
        if phone is not None:
            extra |= phone
        if extra:
            # OR with the list as filtered before the text search, so filters keep applying.
            queryset = queryset | unsearched.filter(extra)
        return queryset, may_have_duplicates


@admin.register(Shop)
class ShopAdmin(ServiceSaveAdmin):
    """Shops are saved through `save_shop`, which tells open boards about what their rows show."""

    list_display = ["name", "center", "address", "phone", "prep_minutes", "is_active"]
    list_filter = ["center", "is_active"]
    list_select_related = ["center"]
    search_fields = ["name", "address"]
    readonly_fields = ["version"]

    def save_model(self, request, obj: Shop, form, change: bool) -> None:
        saved = self.save_through(
            lambda: services.save_shop(
                actor=request.user,
                shop_id=obj.pk if change else None,
                **{field: getattr(obj, field) for field in services.SHOP_FIELDS},
            )
        )
        obj.pk, obj.version = saved.pk, saved.version


class CancelOrdersForm(forms.Form):
    reason = forms.CharField(
        max_length=200,
        initial="Cancelled by admin",
        help_text="Shown to the call center, the dispatcher and the rider.",
    )


@admin.register(Order)
class OrderAdmin(OrderSearchMixin, HelpChangeListMixin, ReadOnlyAdmin):
    changelist_help = (
        "Orders are taken on the call-center page or through the API, so they cannot be added or edited "
        "here. Cancel them with the “Cancel selected orders” action."
    )
    list_display = [
        "number",
        "center",
        "shop",
        "customer_name",
        "customer_phone",
        "status",
        "created_at",
        "promised_at",
    ]
    list_filter = ["center", "status", "created_at"]
    list_select_related = ["center", "shop"]
    date_hierarchy = "created_at"
    search_fields = ["customer_phone", "address", "customer_name"]
    search_help_text = "Order number (123 or #123), phone, address or customer name."
    phone_field = "customer_phone"
    show_full_result_count = False
    actions = ["cancel_selected"]
    fieldsets = [
        (None, {"fields": ["center", "shop", "status", "delivery_link", "cancel_reason", "version"]}),
        ("Customer", {"fields": ["customer_name", "customer_phone", "address", "lat", "lng"]}),
        ("Order", {"fields": ["item_list", "note", "promised_at", "created_at", "created_by"]}),
    ]
    readonly_fields = ["delivery_link", "item_list", "created_at"]

    @admin.display(description="Order", ordering="pk")
    def number(self, order: Order) -> str:
        return f"#{order.pk}"

    @admin.display(description="Delivery")
    def delivery_link(self, order: Order) -> str:
        delivery = getattr(order, "delivery", None)
        if delivery is None:
            return "—"
        url = reverse("admin:deliveries_delivery_change", args=[delivery.pk])
        return format_html('<a href="{}">{} (timeline)</a>', url, delivery.get_status_display())

    @admin.display(description="Items")
    def item_list(self, order: Order) -> str:
        return ", ".join(f"{item.get('qty', 1)} × {item.get('name', '?')}" for item in order.items) or "—"

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("deliveries.change_order")

    @admin.action(description="Cancel selected orders", permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        """Ask for a reason, then cancel each order through `cancel_order`."""
        form = CancelOrdersForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            run_each(
                self,
                request,
                queryset.order_by("pk"),
                lambda order: services.cancel_order(
                    actor=request.user, order_id=order.pk, reason=reason, source=Source.ADMIN
                ),
                done="Cancelled",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Cancel orders",
            "opts": self.opts,
            "orders": queryset.order_by("pk"),
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action_name": "cancel_selected",
        }
        return TemplateResponse(request, "admin/deliveries/order/cancel_selected_confirmation.html", context)


class TimelineInline(admin.TabularInline):
    model = TimelineEntry
    fields = ["at", "actor_label", "source", "action", "from_status", "to_status", "detail"]
    readonly_fields = fields
    ordering = ["at", "pk"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(OrderSearchMixin, HelpChangeListMixin, ReadOnlyAdmin):
    changelist_help = (
        "Deliveries change only through their commands: use the actions below "
        "(or the dispatcher board), never by editing."
    )
    list_display = [
        "order",
        "center",
        "shop",
        "status",
        "rider",
        "created_at",
        "assigned_at",
        "picked_up_at",
        "delivered_at",
        "version",
    ]
    list_filter = ["center", "status", "created_at"]
    list_select_related = ["order", "center", "shop", "rider"]
    date_hierarchy = "created_at"
    search_fields = ["order__customer_phone", "order__address", "rider__name"]
    search_help_text = "Order number (123 or #123), phone, address or rider name."
    order_number_field = "order_id"
    phone_field = "order__customer_phone"
    show_full_result_count = False
    inlines = [TimelineInline]
    actions = ["unassign_selected", "pick_up_selected", "deliver_selected"]
    fields = [
        "order",
        "center",
        "shop",
        "status",
        "rider",
        "version",
        "created_at",
        "assigned_at",
        "picked_up_at",
        "delivered_at",
        "cancelled_at",
        "updated_at",
    ]
    readonly_fields = fields

    def has_dispatch_permission(self, request) -> bool:
        return request.user.has_perm("deliveries.change_delivery")

    def _run(self, request, queryset, command, done: str) -> None:
        run_each(
            self,
            request,
            queryset.order_by("pk"),
            lambda delivery: command(actor=request.user, delivery_id=delivery.pk, source=Source.ADMIN),
            label=lambda delivery: f"#{delivery.order_id}",
            done=done,
        )

    @admin.action(description="Unassign selected deliveries", permissions=["dispatch"])
    def unassign_selected(self, request, queryset):
        self._run(request, queryset, services.unassign_delivery, "Unassigned")

    @admin.action(description="Mark selected deliveries picked up", permissions=["dispatch"])
    def pick_up_selected(self, request, queryset):
        self._run(request, queryset, services.pick_up_delivery, "Marked picked up")

    @admin.action(description="Mark selected deliveries delivered", permissions=["dispatch"])
    def deliver_selected(self, request, queryset):
        self._run(request, queryset, services.deliver_delivery, "Marked delivered")


@admin.register(TimelineEntry)
class TimelineEntryAdmin(OrderSearchMixin, ReadOnlyAdmin):
    list_display = ["at", "delivery", "actor_label", "source", "action", "from_status", "to_status"]
    list_filter = ["source", "action", "at"]
    list_select_related = ["delivery"]
    date_hierarchy = "at"
    search_fields = ["actor_label"]
    search_help_text = "Order number (123 or #123) or who made the change."
    order_number_field = "delivery__order_id"
    show_full_result_count = False
    fields = ["delivery", "at", "actor", "actor_label", "source", "action", "from_status", "to_status", "detail"]
