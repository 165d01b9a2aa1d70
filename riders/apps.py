from django.apps import AppConfig


class RidersConfig(AppConfig):
    name = "riders"
    verbose_name = "Riders"

    def ready(self) -> None:
        from riders import streams

        streams.register()
