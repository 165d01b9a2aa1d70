"""The ops monitor page (`/ops/`, HQ only): live figures of every process, refreshed by htmx polling."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from core.access import Role, access_for
from realtime.ops import ops_snapshot


def _require_hq(request) -> None:
    if access_for(request.user).role != Role.HQ:
        raise PermissionDenied("This page is not for your role.")


def _context() -> dict:
    return {"ops": ops_snapshot(), "refresh": settings.OPS_REFRESH_SECONDS}


@login_required
def ops_page(request):
    """Connections, event flow, faults and process health across the deployment."""
    _require_hq(request)
    return render(request, "realtime/ops.html", _context())


@login_required
def ops_panel(request):
    """The page's figures alone, for htmx's polling."""
    _require_hq(request)
    return render(request, "realtime/ops.html#panel", _context())
