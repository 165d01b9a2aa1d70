from django.urls import path

from deliveries import replay_page, reports_page, rider_page, views, views_orders

urlpatterns = [
    path("orders/", views_orders.orders_page, name="orders"),
    path("orders/list/", views_orders.order_list, name="order-list"),
    path("orders/customer/", views_orders.customer_lookup, name="customer-lookup"),
    path("orders/<int:order_id>/", views_orders.order_page, name="order"),
    path("orders/<int:order_id>/live/", views_orders.order_live, name="order-live"),
    path("orders/<int:order_id>/rider/", views_orders.order_rider, name="order-rider"),
    path("reports/", reports_page.reports_page, name="reports"),
    path("reports/<slug:table>.csv", reports_page.reports_csv, name="reports-csv"),
    path("rider/", rider_page.rider_page, name="rider"),
    path("rider/sw.js", rider_page.service_worker, name="rider-sw"),
    path("rider/manifest.webmanifest", rider_page.manifest, name="rider-manifest"),
    path("dispatch/", views.dispatch_overview, name="dispatch-overview"),
    path("dispatch/overview/cards/", views.overview_cards, name="overview-cards"),
    path("dispatch/<slug:center>/", views.dispatch_board, name="dispatch-board"),
    path("dispatch/<slug:center>/rows/", views.board_rows, name="board-rows"),
    path("dispatch/<slug:center>/deliveries/<int:delivery_id>/", views.delivery_drawer, name="delivery-drawer"),
    path("dispatch/<slug:center>/replay/", replay_page.replay_page, name="dispatch-replay"),
    path("dispatch/<slug:center>/replay/at/", replay_page.replay_at, name="replay-at"),
    path(
        "dispatch/<slug:center>/replay/deliveries/<int:delivery_id>/",
        replay_page.replay_delivery,
        name="replay-delivery",
    ),
]
