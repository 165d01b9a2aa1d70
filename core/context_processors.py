"""Template context every page of the shell shares."""

from django.urls import reverse
from django.utils.functional import SimpleLazyObject

from core import access


def navigation(request):
    """`nav`: the pages the user may open (core.access.pages_for), each with its URL and `current`.

    Lazy: only a page that shows the navigation pays for it. The current page is the one whose URL
    is the longest prefix of the request's path (a board's rows and drawer belong to the board).
    """

    def items() -> list[dict]:
        pages = [(page, reverse(page.url_name, kwargs=page.url_kwargs)) for page in access.pages_for(request.user)]
        current = max((url for _, url in pages if request.path.startswith(url)), key=len, default=None)
        links = [{"label": page.label, "url": url, "current": url == current} for page, url in pages]
        boards = [link for link, (page, _) in zip(links, pages, strict=True) if page.center]  # next to each other
        if len(boards) == 1:
            boards[0]["label"] += " board"
        if len(boards) < 2:
            return links
        # Several boards (HQ, a dispatcher of many centers): one "Boards" menu where the first one was.
        menu = {"label": "Boards", "links": boards, "current": any(link["current"] for link in boards)}
        first = links.index(boards[0])
        return [*links[:first], menu, *links[first + len(boards) :]]

    return {"nav": SimpleLazyObject(items)}
