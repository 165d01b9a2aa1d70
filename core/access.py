"""Who may do what where: a user's role and centers, and the rules every caller checks.

Services, API endpoints, pages and stream subscriptions all ask these functions, so a rule lives
in exactly one place. Superusers are treated as HQ. Commands are authorized by `authorize`, which
every service calls for whoever acts: a user, an API token (`TokenActor`) or the system (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.postgres.aggregates import ArrayAgg
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import F, OuterRef, Q, Subquery, Value
from django.db.models.expressions import RawSQL

from core.actors import TokenActor
from core.models import Center, StaffProfile

Role = StaffProfile.Role


@dataclass(frozen=True)
class Access:
    user_id: int
    role: str | None
    # Center codes the user works for; None means every center (HQ).
    centers: frozenset[str] | None
    rider_id: int | None = None

    def serves(self, center_code: str) -> bool:
        return self.centers is None or center_code in self.centers

    def center_codes(self) -> list[str]:
        """Return the codes of the centers this user works for (all of them for HQ)."""
        if self.centers is None:
            return list(Center.objects.order_by("code").values_list("code", flat=True))
        return sorted(self.centers)


NO_ACCESS = Access(user_id=0, role=None, centers=frozenset())


def access_for(user) -> Access:
    """Return (and cache on the user object) the user's role and centers."""
    if user is None or not user.is_authenticated or not user.is_active:
        return NO_ACCESS
    cached = getattr(user, "_bros_access", None)
    if cached is not None:
        return cached
    profile = StaffProfile.objects.filter(user=user).prefetch_related("centers").first()
    if user.is_superuser or (profile and profile.role == Role.HQ):
        access = _build_access(user, profile_role=Role.HQ)
    elif profile is None:
        access = _build_access(user, profile_role=None)
    elif profile.role == Role.RIDER:
        # Through the riders' relation to their center, so that this layer imports no domain app.
        rider = Center.objects.filter(riders__user=user).values_list("code", "riders__pk").first()
        access = _build_access(user, profile_role=Role.RIDER, rider=rider)
    else:
        access = _build_access(user, profile_role=profile.role, center_codes=[c.code for c in profile.centers.all()])
    user._bros_access = access
    return access


def _build_access(user, *, profile_role: str | None, center_codes=(), rider: tuple[str, int] | None = None) -> Access:
    """The Access of an active user from their profile's role (None: no profile), centers and rider row."""
    if user.is_superuser or profile_role == Role.HQ:
        return Access(user_id=user.pk, role=Role.HQ, centers=None)
    if profile_role is None:
        return Access(user_id=user.pk, role=None, centers=frozenset())
    if profile_role == Role.RIDER:
        return Access(
            user_id=user.pk,
            role=Role.RIDER,
            centers=frozenset([rider[0]]) if rider else frozenset(),
            rider_id=rider[1] if rider else None,
        )
    return Access(user_id=user.pk, role=profile_role, centers=frozenset(center_codes))


def cached_access(user) -> Access | None:
    """The Access `access_for` cached on this user object, or None if it was not read yet (no query)."""
    return getattr(user, "_bros_access", None)


def _users_with_access_query(user_ids):
    """The queryset behind `users_with_access` (compiled once per process, see `_compiled_query`).

    The ids are ONE array parameter (`pk IN (SELECT unnest(%s))`), so the SQL is the same for any
    number of users and is built once.
    """
    pk = get_user_model()._meta.pk
    ids = RawSQL(f"SELECT unnest(%s::{pk.db_type(connection)}[])", [user_ids])
    riders = Center.objects.filter(riders__user=OuterRef("pk")).order_by("code")  # `.first()` in access_for
    return (
        get_user_model()
        .objects.filter(pk__in=ids)
        .annotate(
            bros_profile_id=F("staff__id"),
            bros_role=F("staff__role"),
            bros_centers=ArrayAgg("staff__centers__code", filter=Q(staff__centers__isnull=False), default=Value([])),
            bros_rider_center=Subquery(riders.values("code")[:1]),
            bros_rider_id=Subquery(riders.values("riders__pk")[:1]),
        )
    )


_compiled: dict[str, tuple[str, list, int]] = {}


def _compiled_query() -> tuple[str, list, int]:
    """The query's SQL, its parameters and the position of the id array among them.

    Building this ORM query costs ~2.5 ms of CPU per call, ten times the query's own client-side
    cost: too much for each handshake of a connection storm, so it is compiled once.
    """
    key = get_user_model()._meta.label
    if key not in _compiled:
        marker: list = []
        sql, params = _users_with_access_query(marker).query.sql_with_params()
        params = list(params)
        (at,) = [i for i, param in enumerate(params) if param is marker]  # RawSQL passes its parameter as is
        _compiled[key] = (sql, params, at)
    return _compiled[key]


def users_with_access(user_ids) -> dict:
    """The users `user_ids` (active or not; missing ones left out) by id, each with their Access read in the same query.

    The WebSocket handshake's read (issue 13): users, profile roles, centers and rider rows in ONE
    query for a whole batch of handshakes, instead of `get_user` + `access_for`'s two or three per
    user. The Access is cached on each active user like `access_for` caches it, and equals what
    `access_for` would return.
    """
    sql, params, at = _compiled_query()
    params = [*params[:at], list(dict.fromkeys(user_ids)), *params[at + 1 :]]
    users = {}
    for user in get_user_model().objects.raw(sql, params):
        if user.is_active:
            role = user.bros_role if user.bros_profile_id is not None else None
            rider = (user.bros_rider_center, user.bros_rider_id) if user.bros_rider_center is not None else None
            user._bros_access = _build_access(user, profile_role=role, center_codes=user.bros_centers, rider=rider)
        users[user.pk] = user
    return users


@dataclass(frozen=True)
class Page:
    """A page of the site in the navigation: its URL name, its label (a board's: its center's name), its center."""

    url_name: str
    label: str
    center: str | None = None

    @property
    def url_kwargs(self) -> dict[str, str]:
        return {"center": self.center} if self.center else {}


def pages_for(user) -> list[Page]:
    """The pages the user may open, in navigation order; the first is where they land after login.

    Superusers land on the admin; other staff find it last. The views keep their own checks, and
    the tests hold this list to them. One query at most (the boards' center names), cached on the
    user object like `access_for`: the navigation and a board's center switch share it.
    """
    cached = getattr(user, "_bros_pages", None)
    if cached is not None:
        return cached
    access = access_for(user)
    pages = []
    if access.role == Role.HQ:
        pages.append(Page("dispatch-overview", "All centers"))
    if access.role in (Role.HQ, Role.DISPATCHER):
        centers = Center.objects.order_by("code")
        if access.centers is not None:
            centers = centers.filter(code__in=access.centers)
        pages += [Page("dispatch-board", name, center=code) for code, name in centers.values_list("code", "name")]
    if access.role in (Role.HQ, Role.CALLCENTER):
        pages.append(Page("orders", "Orders"))
    if access.role == Role.HQ or (access.role == Role.DISPATCHER and access.centers):
        pages.append(Page("reports", "Reports"))
    if access.role == Role.HQ:
        pages.append(Page("ops", "Ops"))
    if access.role == Role.RIDER:
        pages.append(Page("rider", "My deliveries"))
    if access is not NO_ACCESS and user.is_staff:
        admin = Page("admin:index", "Admin")
        if user.is_superuser:
            pages.insert(0, admin)
        else:
            pages.append(admin)
    if access is not NO_ACCESS:
        user._bros_pages = pages
    return pages


def center_of_rider_user(user_id: int) -> str | None:
    """The code of the center whose rider is the user `user_id`, or None if they are no rider."""
    return Center.objects.filter(riders__user_id=user_id).values_list("code", flat=True).first()


def can_take_orders(user, center_code: str) -> bool:
    """Create or cancel orders: call-center staff of the center, its dispatchers, HQ."""
    access = access_for(user)
    return access.role in (Role.HQ, Role.CALLCENTER, Role.DISPATCHER) and access.serves(center_code)


def can_dispatch(user, center_code: str) -> bool:
    """Assign, reassign, unassign deliveries and manage riders' duty: dispatchers of the center, HQ."""
    access = access_for(user)
    return access.role in (Role.HQ, Role.DISPATCHER) and access.serves(center_code)


def can_view_center(user, center_code: str) -> bool:
    """See a center's orders and deliveries."""
    access = access_for(user)
    return access.role in (Role.HQ, Role.DISPATCHER, Role.CALLCENTER) and access.serves(center_code)


def can_handle_delivery(user, *, center_code: str, rider_id: int | None) -> bool:
    """Pick up or deliver: the delivery's own rider, or whoever may dispatch the center."""
    access = access_for(user)
    if access.role == Role.RIDER:
        return rider_id is not None and access.rider_id == rider_id
    return can_dispatch(user, center_code)


def can_set_duty(user, *, center_code: str, rider_id: int) -> bool:
    """Start or end a shift: the rider themself, or whoever may dispatch the center."""
    access = access_for(user)
    if access.role == Role.RIDER:
        return access.rider_id == rider_id
    return can_dispatch(user, center_code)


def token_allows(patterns, stream: str) -> bool:
    """Whether a token scoped to `patterns` ("ns:room", "ns:*" or "*") covers the stream `ns:room`."""
    namespace = stream.partition(":")[0]
    return any(p == "*" or p == stream or (p.endswith(":*") and p[:-2] == namespace) for p in patterns)


# Each command: the stream namespace whose "namespace:center" a token must cover (None: no token may
# run it), the user rule, and what a refused user is told. The names are those tokens are scoped to.
_COMMANDS = {
    "orders.create": ("orders", "take_orders", "You do not take orders for this center."),
    "orders.cancel": ("orders", "take_orders", "You do not handle orders of this center."),
    "deliveries.assign": ("deliveries", "dispatch", "You do not dispatch this center."),
    "deliveries.unassign": ("deliveries", "dispatch", "You do not dispatch this center."),
    "deliveries.pickup": ("deliveries", "handle_delivery", "This delivery is not yours."),
    "deliveries.deliver": ("deliveries", "handle_delivery", "This delivery is not yours."),
    "riders.duty": ("riders", "set_duty", "You cannot change this rider's shift."),
    "riders.manage": ("riders", "dispatch", "You do not manage the riders of this center."),
    "shops.manage": (None, "hq", "Only HQ manages shops."),
    "centers.manage": (None, "hq", "Only HQ manages centers."),
}
COMMANDS = frozenset(_COMMANDS)


def _user_may(user, rule: str, *, center_code: str | None, rider_id: int | None) -> bool:
    if rule == "hq":
        return access_for(user).role == Role.HQ
    if center_code is None:
        return False
    if rule == "take_orders":
        return can_take_orders(user, center_code)
    if rule == "dispatch":
        return can_dispatch(user, center_code)
    if rule == "handle_delivery":
        return can_handle_delivery(user, center_code=center_code, rider_id=rider_id)
    return rider_id is not None and can_set_duty(user, center_code=center_code, rider_id=rider_id)


def authorize(actor, command: str, *, center_code: str | None = None, rider_id: int | None = None) -> None:
    """Refuse (PermissionDenied) the command on the center unless the actor may run it.

    `actor` is a user, a `TokenActor` (its commands and its "namespace:center" stream scopes), or
    None for the system itself (simulator, tasks), which may do anything. `rider_id` is the
    delivery's rider (pick up, deliver) or the rider whose shift changes. HQ-only commands
    (shops, centers) need no center and are never run by tokens.
    """
    namespace, rule, refusal = _COMMANDS[command]
    if actor is None:
        return
    if isinstance(actor, TokenActor):
        if (
            namespace is None
            or center_code is None
            or command not in actor.commands
            or not token_allows(actor.streams, f"{namespace}:{center_code}")
        ):
            raise PermissionDenied("This token is not allowed to do that.")
        return
    if not _user_may(actor, rule, center_code=center_code, rider_id=rider_id):
        raise PermissionDenied(refusal)
