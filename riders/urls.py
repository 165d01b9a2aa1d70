from django.urls import path

from riders import views

urlpatterns = [path("rider/", views.rider_page, name="rider")]
