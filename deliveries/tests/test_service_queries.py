"""Each command costs a fixed, small number of queries, however much data the center holds."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deliveries import services
from riders.services import set_rider_duty
from tests.support import take_order


def queries(command, **kwargs) -> int:
    with CaptureQueriesContext(connection) as captured:
        command(**kwargs)
    return len(captured.captured_queries)


@pytest.mark.parametrize("earlier_orders", [0, 30])
def test_commands_run_a_constant_number_of_queries(demo, earlier_orders):
    """Create, assign, pick up and deliver each run the same few queries with 0 or 30 other orders."""
    for _ in range(earlier_orders):
        take_order(demo)
    rider = demo.rider()
    set_rider_duty(actor=None, rider_id=rider.pk, on_duty=True)
    dispatcher = demo.user("dispatch-gangnam")
    dispatcher_access = services.access.access_for(dispatcher)  # role look-up cached on the user
    assert dispatcher_access.role == "dispatcher"

    with CaptureQueriesContext(connection) as created:
        delivery_id = take_order(demo).delivery.pk
    counts = {
        "create": len(created.captured_queries),
        "assign": queries(services.assign_delivery, actor=dispatcher, delivery_id=delivery_id, rider_id=rider.pk),
        "pick_up": queries(services.pick_up_delivery, actor=dispatcher, delivery_id=delivery_id),
        "deliver": queries(services.deliver_delivery, actor=dispatcher, delivery_id=delivery_id),
    }
    # Savepoints, locks, the change, its timeline entry, one statement for all events (their
    # streams' counters and rows: outbox.emit). Nothing per rider, per delivery, per stream or per
    # subscriber. A delivery is locked by one query and read by the next (see
    # services._lock_delivery), so each command pays one read more.
    assert counts == {"create": 8, "assign": 9, "pick_up": 7, "deliver": 11}
