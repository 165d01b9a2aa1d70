"""The reports page (`/reports/`) and its CSV exports: HQ for every center, a dispatcher for their own.

The figures come from `deliveries.reports`; this module parses the form, checks who asks for which
centers, renders the tables and the SVG charts and streams the CSVs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import date, timedelta

from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from core import access
from core.models import Center
from deliveries import reports
from deliveries.models import Delivery

MAX_DAYS = 92  # a quarter: enough for any review, bounded so one request cannot scan years
DAY_FORMAT = "Enter a day as YYYY-MM-DD."
FIRST_DAY = date(2000, 1, 1)  # before BROS existed; bounds the dates so no arithmetic overflows
TABLES = ("summary", "stages", "hours", "riders", "exceptions")


class ReportForm(forms.Form):
    """The period: one day (`from` alone) or a range; the centers are checked separately (`_centers`)."""

    start = forms.DateField(input_formats=["%Y-%m-%d"], required=False, error_messages={"invalid": DAY_FORMAT})
    end = forms.DateField(input_formats=["%Y-%m-%d"], required=False, error_messages={"invalid": DAY_FORMAT})

    def clean(self):
        data = super().clean()
        today = timezone.localdate()
        start, end = data.get("start"), data.get("end")
        if "start" in self.errors or "end" in self.errors:
            return data
        start = start or end or today
        end = end or start
        latest = today + timedelta(days=MAX_DAYS)
        for field, day in (("start", start), ("end", end)):
            # Far-off days would overflow datetime arithmetic (9999-12-31 + 1 day) further on.
            if not FIRST_DAY <= day <= latest:
                self.add_error(field, f"Choose a day from {FIRST_DAY} to {latest}.")
        if self.errors:
            return data
        if end < start:
            self.add_error("end", "The last day must not be before the first.")
        elif (end - start).days + 1 > MAX_DAYS:
            self.add_error("end", f"At most {MAX_DAYS} days at a time.")
        data["start"], data["end"] = start, end
        return data


def _query(request) -> dict:
    """The form's fields from the query string under their public names (`from`, `to`)."""
    return {"start": request.GET.get("from", ""), "end": request.GET.get("to", "")}


def _centers(request) -> tuple[list[Center], list[str]]:
    """The centers asked for (`center`, repeated), default all of the user's; refuse any other.

    A center the user does not serve is refused exactly like one that does not exist: both are
    403 with the same message, so the answer tells nothing about other centers.
    """
    user_access = access.access_for(request.user)
    if user_access.role not in (access.Role.HQ, access.Role.DISPATCHER):
        raise PermissionDenied("This page is not for your role.")
    mine = user_access.center_codes()
    if not mine and user_access.role == access.Role.DISPATCHER:
        raise PermissionDenied("You are not assigned to a center yet.")
    asked = request.GET.getlist("center") or mine
    if any(code not in mine for code in asked):
        raise PermissionDenied("You do not report on this center.")
    return list(Center.objects.filter(code__in=set(asked)).order_by("code")), mine


def _period(request) -> tuple[ReportForm, list[Center], list[str], reports.Period | None]:
    """The form, the centers asked for, all the user's center codes, and the period if the form is valid."""
    centers, mine = _centers(request)
    form = ReportForm(_query(request))
    if not form.is_valid():
        return form, centers, mine, None
    data = form.cleaned_data
    return form, centers, mine, reports.Period(data["start"], data["end"], tuple(c.pk for c in centers))


@login_required
def reports_page(request):
    """The figures of the period as tables and charts; a refused form keeps what was typed and says why (400)."""
    form, centers, mine, period = _period(request)
    context = {
        "form": form,
        "centers": centers,
        "all_centers": mine,
        "chosen": {c.code for c in centers},
        "raw_from": request.GET.get("from", ""),
        "raw_to": request.GET.get("to", ""),
    }
    if period is None:
        return render(request, "deliveries/reports.html", context, status=400)
    now = timezone.now()
    summary = reports.summary(period, now=now)
    stages = reports.stages(period)
    hours = reports.by_hour(period)
    exceptions = list(reports.exceptions(period, now=now)[: reports.EXCEPTIONS_SHOWN + 1])
    context |= {
        "period": period,
        "summary": summary,
        "statuses": [(value, label, summary[value]) for value, label in Delivery.Status.choices],
        "stages": stages,
        "hours": hours,
        "riders": reports.by_rider(period),
        "exceptions": exceptions[: reports.EXCEPTIONS_SHOWN],
        "more_exceptions": len(exceptions) > reports.EXCEPTIONS_SHOWN,
        "hour_chart": hour_chart(hours),
        "stage_chart": stage_chart(stages),
        "query": request.GET.urlencode(),
    }
    return render(request, "deliveries/reports.html", context)


# ---- CSV ----

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value) -> str:
    """A cell a spreadsheet shows as text: text that could start a formula gets a leading apostrophe.

    Customer names, addresses and cancel reasons are typed by the public; "=HYPERLINK(…)" must
    not become a live formula in whoever opens the export. Numbers we computed (-10.5 minutes
    early) stay numbers.
    """
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class _Echo:
    """A file whose write returns what it is given: csv.writer then yields lines instead of storing them."""

    def write(self, value: str) -> str:
        return value


def csv_lines(header: list[str], chunks: Iterable[list[list]]) -> Iterator[str]:
    """The CSV text of `header` and the rows of `chunks`, one string per chunk (few hops for async serving).

    It starts with a byte-order mark: without it Excel reads UTF-8 as the local code page and
    Korean names arrive garbled.
    """
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(header)
    for chunk in chunks:
        yield "".join(writer.writerow([spreadsheet_safe(cell) for cell in row]) for row in chunk)


async def _async_lines(lines: Iterator[str]):
    """Serve a sync generator under ASGI without Django first reading it all into a list.

    Each step runs on the request's sync thread, where the database connection lives.
    """
    done = object()
    while (part := await sync_to_async(next, thread_sensitive=True)(lines, done)) is not done:
        yield part


def _minutes(minutes: float | None) -> float | str:
    return "" if minutes is None else round(minutes, 1)


def _local(moment) -> str:
    return "" if moment is None else timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def _share(value: float | None) -> float | str:
    return "" if value is None else round(value * 100, 1)


def _table(name: str, period: reports.Period) -> tuple[list[str], Iterable[list[list]]]:
    now = timezone.now()
    if name == "summary":
        figures = reports.summary(period, now=now)
        keys = ["orders", *Delivery.Status.values, "on_time", "late", "overdue", "reassigned"]
        rows = [[key, figures[key]] for key in keys] + [["on_time_percent", _share(figures["on_time_share"])]]
        return ["figure", "value"], [rows]
    if name == "stages":
        rows = [[s.label, _minutes(s.median_minutes), _minutes(s.p90_minutes), s.count] for s in reports.stages(period)]
        return ["stage", "median_minutes", "p90_minutes", "deliveries"], [rows]
    if name == "hours":
        rows = [
            [h["hour"], h["orders"], h["delivered"], h["late"], h["cancelled"], _share(h["late_share"])]
            for h in reports.by_hour(period)
        ]
        return ["hour", "orders", "delivered", "late", "cancelled", "late_percent"], [rows]
    if name == "riders":
        rows = [
            [
                r["name"],
                r["delivered"],
                _share(r["on_time_share"]),
                r["cancelled"],
                round(r["active_hours"], 2),
                round(r["km"], 2),
            ]
            for r in reports.by_rider(period)
        ]
        return ["rider", "delivered", "on_time_percent", "cancelled", "active_hours", "distance_km"], [rows]
    chunks = (
        [
            [
                e["order_id"],
                e["center__code"],
                e["shop__name"],
                e["status"],
                e["order__customer_name"],
                e["order__address"],
                _local(e["created_at"]),
                _local(e["order__promised_at"]),
                _local(e["delivered_at"]),
                _local(e["cancelled_at"]),
                e["order__cancel_reason"],
                e["cancelled_by"] or "",
                e["rider__name"] or "",
                e["reassignments"] or 0,
            ]
            for e in chunk
        ]
        for chunk in reports.exception_chunks(period, now=now)
    )
    header = [
        "order",
        "center",
        "shop",
        "status",
        "customer",
        "address",
        "created",
        "promised",
        "delivered",
        "cancelled",
        "cancel_reason",
        "cancelled_by",
        "rider",
        "reassignments",
    ]
    return header, chunks


@login_required
def reports_csv(request, table: str):
    """One table of the report as a streamed CSV; the same parameters (and refusals) as the page."""
    if table not in TABLES:
        raise Http404("No such table.")
    _form, centers, _mine, period = _period(request)
    if period is None:
        raise Http404("No such report.")  # the page says what is wrong with the form; a link never is
    header, chunks = _table(table, period)
    lines = csv_lines(header, chunks)
    content = _async_lines(lines) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    codes = "-".join(c.code for c in centers)
    days = f"{period.first}" if period.first == period.last else f"{period.first}_{period.last}"
    response["Content-Disposition"] = f'attachment; filename="bros-{table}-{codes}-{days}.csv"'
    return response


# ---- Charts (server-rendered SVG: numbers in, coordinates out) ----

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 720, 220, 32


def hour_chart(hours: list[dict]) -> dict:
    """Bars of orders per hour and a line of the late share (right axis, 0–100 %)."""
    plot_w, plot_h = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    top = max((h["orders"] for h in hours), default=0) or 1
    slot = plot_w / 24
    bars, points, dots = [], [], []
    for h in hours:
        height = plot_h * h["orders"] / top
        x = CHART_PAD + h["hour"] * slot
        bars.append(
            {
                "x": round(x + 2, 1),
                "y": round(CHART_PAD + plot_h - height, 1),
                "w": round(slot - 4, 1),
                "h": round(height, 1),
                "hour": h["hour"],
                "orders": h["orders"],
            }
        )
        if h["late_share"] is not None:
            dot = {"x": round(x + slot / 2, 1), "y": round(CHART_PAD + plot_h * (1 - h["late_share"]), 1), **h}
            dots.append(dot)
            points.append(f"{dot['x']},{dot['y']}")
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "pad": CHART_PAD,
        "bottom": CHART_PAD + plot_h,
        "right": CHART_PAD + plot_w,
        "top_orders": top,
        "bars": bars,
        "late_line": " ".join(points),
        "late_dots": dots,  # a lone hour's share is a dot: a one-point line draws nothing
        "labels": [{"x": round(CHART_PAD + hour * slot + slot / 2, 1), "hour": hour} for hour in range(0, 24, 3)],
    }


def stage_chart(stages: list) -> dict:
    """Horizontal bars of each stage's median and p90 (minutes, negative shown as zero)."""
    label_w, row_h = 180, 36
    plot_w = CHART_WIDTH - label_w - CHART_PAD
    top = max((max(s.p90_minutes or 0, s.median_minutes or 0) for s in stages), default=0) or 1
    rows = []
    for index, stage in enumerate(stages):
        y = CHART_PAD / 2 + index * row_h
        rows.append(
            {
                "label": stage.label,
                "y": y,
                "text_y": y + 16,
                "p90_w": round(plot_w * max(stage.p90_minutes or 0, 0) / top, 1),
                "median_w": round(plot_w * max(stage.median_minutes or 0, 0) / top, 1),
                "stage": stage,
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": int(CHART_PAD / 2 + len(stages) * row_h),
        "label_w": label_w,
        "rows": rows,
        "top_minutes": top,
    }
