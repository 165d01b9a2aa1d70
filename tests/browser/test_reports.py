"""The reports page (`/reports/`) in headless Chromium against the live ASGI server: figures and a CSV download."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from deliveries import services

from . import test_board as board
from .test_board import shot, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

HOSTILE = "=cmd|' /C calc'!A0"


def test_reports_show_todays_figures_and_download_a_safe_csv(browse, demo_tx):
    """A dispatcher's report of today counts the two orders; the late-and-cancelled CSV downloads, formula quoted."""
    take_order(demo_tx)
    cancelled = take_order(demo_tx)
    services.cancel_order(actor=demo_tx.user("dispatch-gangnam"), order_id=cancelled.order_id, reason=HOSTILE)
    day = timezone.localtime(cancelled.created_at).date()  # today, unless the test straddles local midnight
    page = browse("dispatch-gangnam", f"/reports/?from={day}")
    assert page.response.status == 200
    expect(page.get_by_role("heading", level=1)).to_contain_text("Reports")
    expect(page.locator("[data-figure=orders]")).to_have_text("2")
    expect(page.locator("[data-figure=cancelled]")).to_have_text("1")
    expect(page.get_by_role("img", name="Orders per hour")).to_be_visible()
    expect(page.locator(f"tr[data-order='{cancelled.order_id}']")).to_contain_text(HOSTILE)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="CSV of late and cancelled deliveries").click()
    download = download_info.value
    assert download.suggested_filename.startswith("bros-exceptions-gangnam-")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8-sig"))))
    assert [(r["order"], r["status"], r["cancel_reason"]) for r in rows] == [
        (str(cancelled.order_id), "cancelled", "'" + HOSTILE)
    ]
    shot(page, "reports")

    expect(page.get_by_role("button", name="Print")).to_be_visible()
    page.emulate_media(media="print")
    expect(page.locator(".report-form")).to_be_hidden()
    expect(page.locator("a.csv").first).to_be_hidden()
    expect(page.locator("[data-figure=orders]")).to_be_visible()


def test_reports_form_keeps_a_refused_day_beside_its_message(browse, demo_tx):
    """Typing a range that ends before it starts shows the message by the field, the days still filled in."""
    page = browse("hq", "/reports/?from=2026-01-15&to=2026-01-14")
    assert page.response.status == 400
    expect(page.locator("#report-to-error")).to_have_text("The last day must not be before the first.")
    expect(page.get_by_label("From")).to_have_value("2026-01-15")
    expect(page.get_by_label("To")).to_have_value("2026-01-14")
    expect(page.get_by_label("To")).to_have_attribute("aria-invalid", "true")
