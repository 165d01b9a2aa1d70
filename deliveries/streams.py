"""The streams deliveries owns, registered with `realtime` when the app is ready.

`deliveries:<center>` and `orders:<center>` carry today's deliveries and orders of a center:
its dispatchers, its call-center staff and HQ read them; nobody publishes (services emit).
"""

from core.access import Role
from deliveries import selectors
from realtime import registry
from realtime.events import delivery_data, order_data

_readers = registry.center_roles(Role.HQ, Role.DISPATCHER, Role.CALLCENTER)


def delivery_items(center_code: str) -> list[dict]:
    return [delivery_data(d).model_dump(mode="json") for d in selectors.todays_deliveries(center_code=center_code)]


def delivery_versions(center_code: str) -> dict[str, int]:
    rows = selectors.todays_deliveries(center_code=center_code).order_by().values_list("pk", "version")
    return {str(pk): version for pk, version in rows}


def order_items(center_code: str) -> list[dict]:
    return [order_data(o).model_dump(mode="json") for o in selectors.todays_orders(center_code=center_code)]


def order_versions(center_code: str) -> dict[str, int]:
    rows = selectors.todays_orders(center_code=center_code).order_by().values_list("pk", "version")
    return {str(pk): version for pk, version in rows}


def register() -> None:
    registry.register(
        registry.StreamKind(
            "deliveries", rooms="center", may_subscribe=_readers, snapshot=delivery_items, versions=delivery_versions
        )
    )
    registry.register(
        registry.StreamKind(
            "orders", rooms="center", may_subscribe=_readers, snapshot=order_items, versions=order_versions
        )
    )
