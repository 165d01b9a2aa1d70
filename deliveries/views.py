"""Pages of the call center and the dispatchers (the board itself is built by the board issue)."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render

from deliveries import access
from deliveries.models import Center

LANDING_BY_ROLE = {
    access.Role.HQ: "dispatch-overview",
    access.Role.CALLCENTER: "orders",
    access.Role.RIDER: "rider",
}


@login_required
def home(request):
    """Send each role to its page; a dispatcher to the board of their (first) center."""
    user_access = access.access_for(request.user)
    if user_access.role == access.Role.DISPATCHER:
        codes = user_access.center_codes()
        if not codes:
            raise PermissionDenied("You are not assigned to a center yet.")
        return redirect("dispatch-board", center=codes[0])
    if user_access.role in LANDING_BY_ROLE:
        return redirect(LANDING_BY_ROLE[user_access.role])
    if request.user.is_staff:
        return redirect("admin:index")
    raise PermissionDenied("Your account has no role yet. Ask an admin.")


def _require_role(request, *roles):
    if access.access_for(request.user).role not in roles:
        raise PermissionDenied("This page is not for your role.")


@login_required
def orders_page(request):
    _require_role(request, access.Role.HQ, access.Role.CALLCENTER, access.Role.DISPATCHER)
    centers = access.access_for(request.user).center_codes()
    return render(request, "deliveries/orders.html", {"centers": centers})


@login_required
def dispatch_overview(request):
    _require_role(request, access.Role.HQ)
    return render(request, "deliveries/overview.html", {"centers": Center.objects.all()})


@login_required
def dispatch_board(request, center: str):
    center_obj = Center.objects.filter(code=center).first()
    if not access.can_dispatch(request.user, center):
        raise PermissionDenied("You do not dispatch this center.")
    if center_obj is None:
        raise Http404("No such center.")
    return render(request, "deliveries/board.html", {"center": center_obj})
