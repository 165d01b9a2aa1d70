"""The HTTP API (protocol.md §4): one NinjaAPI, routers from each app."""

from ninja import NinjaAPI

api = NinjaAPI(title="BROS API", version="1", urls_namespace="api")
