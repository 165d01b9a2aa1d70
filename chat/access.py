"""Who may talk to whom in chat (protocol §2): the rules of the `chat` and `dm` stream kinds.

Center rooms: the center's dispatchers and riders and HQ read and write; its call-center staff
read only (they answer customers' "where is my order" calls and the room is where delays are
announced, but the room stays the channel of those who move the deliveries).
Direct conversations (`dm:<lower id>-<higher id>`): only their two users, and only while the
pair may talk: a dispatcher and a rider of a center the dispatcher serves, or two staff (HQ,
dispatchers, call-center staff) who share a center (HQ shares every center). Nobody else reads
them, HQ included: HQ audits chat in the admin.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from core.access import Access, Role, access_for
from realtime import registry

STAFF = (Role.HQ, Role.DISPATCHER, Role.CALLCENTER)

room_readers = registry.center_roles(Role.HQ, Role.DISPATCHER, Role.RIDER, Role.CALLCENTER)
room_writers = registry.center_roles(Role.HQ, Role.DISPATCHER, Role.RIDER)


def may_converse(a: Access, b: Access) -> bool:
    """Whether users `a` and `b` may have a direct conversation."""
    if a.user_id == b.user_id or a.role is None or b.role is None:
        return False
    if Role.RIDER in (a.role, b.role):
        rider, other = (a, b) if a.role == Role.RIDER else (b, a)
        return other.role == Role.DISPATCHER and any(other.serves(code) for code in rider.centers)
    if a.centers is None or b.centers is None:
        return True
    return bool(a.centers & b.centers)


def peer_access(access: Access, user_ids: tuple[int, int]) -> Access | None:
    """The other user's access if `access` is one of the pair, else None."""
    if access.user_id not in user_ids:
        return None
    peer_id = user_ids[1] if user_ids[0] == access.user_id else user_ids[0]
    peer = get_user_model().objects.filter(pk=peer_id, is_active=True).first()
    return access_for(peer) if peer is not None else None


def conversation_member(access: Access, stream) -> bool:
    """The `dm` rule, for reading and writing alike: one of the pair, and the pair may talk."""
    peer = peer_access(access, stream.user_ids)
    return peer is not None and may_converse(access, peer)


def dm_stream(a: int, b: int) -> str:
    low, high = sorted((a, b))
    return f"dm:{low}-{high}"
