"""Middleware of the browser tests' live server only."""

from django.contrib.contenttypes.models import ContentType


def forget_content_types(get_response):
    """Forget cached content type ids before each request.

    Transactional tests flush the database, which creates the content types again under new ids,
    while the live server lives on: an admin save would log against an id that no longer exists.
    """

    def middleware(request):
        ContentType.objects.clear_cache()
        return get_response(request)

    return middleware
