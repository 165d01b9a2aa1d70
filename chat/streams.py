"""The chat stream of each center, registered with `realtime` when the app is ready.

`chat:<center>`: the center's dispatchers and riders and HQ read and write it; a snapshot is its
latest messages. (Call-center staff do not take part: they reach dispatchers by phone.)
"""

from core.access import Role
from realtime import registry

_members = registry.center_roles(Role.HQ, Role.DISPATCHER, Role.RIDER)


def register() -> None:
    registry.register(registry.StreamKind("chat", rooms="center", may_subscribe=_members, may_publish=_members))
