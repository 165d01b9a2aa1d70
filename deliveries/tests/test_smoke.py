from deliveries.services import create_order


def test_create_order_smoke(demo):
    """A call-center order creates a waiting delivery."""
    order = create_order(
        actor=demo.user("callcenter"),
        shop_id=demo.shop().pk,
        customer_name="Kim",
        customer_phone="010-1234-5678",
        address="Teheran-ro 1",
        items=[{"name": "Chicken", "qty": 1}],
    )
    assert order.delivery.status == "waiting"
