"""The rider's phone page (built by the rider issue)."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from core import access
from riders.models import Rider


@login_required
def rider_page(request):
    if access.access_for(request.user).role != access.Role.RIDER:
        raise PermissionDenied("This page is for riders.")
    rider = Rider.objects.select_related("center").get(user=request.user)
    return render(request, "riders/rider.html", {"rider": rider})
