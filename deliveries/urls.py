from django.urls import path

from deliveries import views

urlpatterns = [
    path("orders/", views.orders_page, name="orders"),
    path("dispatch/", views.dispatch_overview, name="dispatch-overview"),
    path("dispatch/overview/cards/", views.overview_cards, name="overview-cards"),
    path("dispatch/<slug:center>/", views.dispatch_board, name="dispatch-board"),
    path("dispatch/<slug:center>/rows/", views.board_rows, name="board-rows"),
    path("dispatch/<slug:center>/deliveries/<int:delivery_id>/", views.delivery_drawer, name="delivery-drawer"),
]
