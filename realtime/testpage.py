"""A bare page that loads the real-time client and lists what it receives: for browser tests and debugging.

Served only when `settings.DEBUG` or `settings.REALTIME_TEST_PAGE` is on; otherwise it does not exist (404).
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render


@login_required
def view(request):
    """Render the client test page; `?streams=a:b,c:d` picks the streams it follows."""
    if not (settings.DEBUG or getattr(settings, "REALTIME_TEST_PAGE", False)):
        raise Http404("No such page.")
    return render(request, "realtime/test_page.html")
