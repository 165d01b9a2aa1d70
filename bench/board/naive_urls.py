"""URLs of the board benchmark's server: every BROS URL plus the naive page `/bench/naive/<center>/`.

The naive page is the dispatcher board without virtualization: the real `dispatch_board` view,
template, row partial, CSS and script (`static/deliveries/board.js`), but its row window holds ALL
rows of the board query (`board_window(..., limit=100000)`) instead of a screenful. htmx
refreshes its rows, as on the board, through the board's own endpoint, `/dispatch/<center>/rows/`; a request coming
from the naive page (told by its Referer, which the page's same-origin referrer policy always
sends) gets all rows again, every other request goes to the real `board_rows` untouched.

How: `deliveries.views.read_board_window` is wrapped (in this server only) by a function that
hands over to the real one unless the current request is the naive page's (a context variable
set by the two views below); then it reads the real window and swaps in all rows, in the same
database snapshot. So the naive page follows every change to the board's view and context.
"""

from __future__ import annotations

import contextvars
import dataclasses
from urllib.parse import urlsplit

from django.contrib.auth.decorators import login_required
from django.urls import path

from bros.urls import urlpatterns as bros_urlpatterns
from deliveries import views as board_views
from deliveries.selectors import BoardFilter, board_window
from realtime.snapshots import in_one_snapshot

NAIVE_LIMIT = 100_000
NAIVE_PREFIX = "/bench/naive/"

_naive = contextvars.ContextVar("naive_board", default=False)
_real_read_board_window = board_views.read_board_window


def read_all_rows(*, center_code: str, board: BoardFilter):
    """The board's window (counts, stream head, …) with every row of the query, from one snapshot."""

    def read():
        window = _real_read_board_window(center_code=center_code, board=board, offset=0, limit=1)
        rows = board_window(center_code=center_code, board=board, offset=0, limit=NAIVE_LIMIT, now=window.now)
        return dataclasses.replace(window, rows=rows, offset=0)

    return in_one_snapshot(read)


def _read_board_window(*, center_code: str, board: BoardFilter, offset: int, limit: int):
    if not _naive.get():
        return _real_read_board_window(center_code=center_code, board=board, offset=offset, limit=limit)
    return read_all_rows(center_code=center_code, board=board)


board_views.read_board_window = _read_board_window


def _as_naive(view, request, center: str):
    token = _naive.set(True)
    try:
        return view(request, center)
    finally:
        _naive.reset(token)


@login_required
def naive_board(request, center: str):
    """The board page with all rows rendered."""
    return _as_naive(board_views.dispatch_board, request, center)


def _from_naive_page(request) -> bool:
    return urlsplit(request.headers.get("Referer", "")).path.startswith(NAIVE_PREFIX)


@login_required
def rows(request, center: str):
    """The board's rows endpoint; for the naive page, all rows again (its script replaces the whole list)."""
    if _from_naive_page(request):
        return _as_naive(board_views.board_rows, request, center)
    return board_views.board_rows(request, center)


urlpatterns = [
    path("bench/naive/<str:center>/", naive_board, name="bench-naive-board"),
    # Before the BROS patterns, so it answers /dispatch/<center>/rows/ (and hands the board's requests on).
    path("dispatch/<str:center>/rows/", rows),
    *bros_urlpatterns,
]
