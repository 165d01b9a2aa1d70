"""The ops monitor (`/ops/`) in headless Chromium against a live ASGI server: its figures change live."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from . import test_board as board
from .test_board import live, shot, take_order

browse = board.browse  # the board tests' fixture: a logged-in page on the live server

pytestmark = pytest.mark.browser

OPS = "/ops/"


def figure(page, name: str):
    return page.locator(f"[data-figure={name}]")


def test_ops_page_shows_a_new_connection_live_and_its_departure(browse, demo_tx):
    """HQ watches /ops/; a dispatcher opens a gangnam order: connections, center and role counts go up, then down.

    An order page holds exactly one socket (the board has a second one, the chat panel's, opened
    when the browser is idle), so the counts are exact.
    """
    delivery = take_order(demo_tx)
    ops = browse("hq", OPS)
    assert ops.response.status == 200
    expect(ops.locator("h1")).to_have_text("Operations")
    expect(figure(ops, "connections")).to_have_text("0")
    expect(figure(ops, "postgres-ms")).to_contain_text("ms")

    dispatcher = browse("dispatch-gangnam", f"/orders/{delivery.order_id}/")
    live(dispatcher)
    expect(figure(ops, "connections")).to_have_text("1")
    expect(ops.locator("[data-center=gangnam]")).to_have_text("1")
    expect(ops.locator("[data-role=dispatcher]")).to_have_text("1")
    expect(ops.locator("tr[data-process] [data-figure=process-connections]")).to_have_text("1")
    expect(ops.locator("tr[data-process] [data-figure=process-roles]")).to_have_text("dispatcher 1")
    shot(ops, "ops")

    dispatcher.close()
    expect(figure(ops, "connections")).to_have_text("0")


def test_ops_page_is_refused_to_a_dispatcher(browse, demo_tx):
    page = browse("dispatch-gangnam", OPS)
    assert page.response.status == 403
