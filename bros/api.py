"""The HTTP API (protocol.md §4): one NinjaAPI, routers from each app, one error shape.

Errors are JSON `{"detail": …}`: 401 unauthenticated, 403 not allowed, 404 unknown (or not
visible to the caller), 409 refused by the entity's state (with the current entity and who
changed it), 422 invalid input (a list of `{"loc", "msg", "type"}` like request validation),
503 with Retry-After when Redis is down and the request needs it.
"""

from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser

from chat.api import router as chat_router
from core import strict_input
from core.api_auth import API_AUTH, IdempotencyKeyError
from core.exceptions import CommandRefused
from deliveries.api import order_out
from deliveries.api import router as deliveries_router
from deliveries.models import Delivery, Order
from realtime.api import router as streams_router
from realtime.api_presence import router as presence_router
from realtime.bus import RedisUnavailable
from realtime.events import delivery_data, rider_data
from realtime.ratelimit import RateLimited
from realtime.services import NotPublishable
from riders.api import router as riders_router
from riders.api_positions import router as positions_router
from riders.models import Rider


class StrictJSONParser(Parser):
    """Request bodies as strict JSON (`core.strict_input`): what would fail later is a 400 now."""

    def parse_body(self, request):
        return strict_input.loads(request.body)


api = NinjaAPI(
    title="BROS API",
    version="1",
    description="Orders, deliveries and riders of BROS; the real-time protocol is described in protocol.md.",
    auth=API_AUTH,
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url="/docs",
    parser=StrictJSONParser(),
)
api.add_router("", deliveries_router)
api.add_router("", riders_router)
api.add_router("", positions_router)
api.add_router("/ops", presence_router)
api.add_router("", streams_router)
api.add_router("", chat_router)


def _entity_json(entity) -> dict | None:
    if isinstance(entity, Delivery):
        return delivery_data(entity).model_dump(mode="json")
    if isinstance(entity, Order):
        return order_out(entity)
    if isinstance(entity, Rider):
        return rider_data(entity).model_dump(mode="json")
    return None


@api.exception_handler(CommandRefused)
def command_refused(request, exc: CommandRefused):
    body = {"detail": exc.message, "code": exc.code, "current": _entity_json(exc.entity)}
    if exc.changed_by:
        body["changed_by"] = exc.changed_by
    return api.create_response(request, body, status=409)


@api.exception_handler(ValidationError)
def invalid_input(request, exc: ValidationError):
    if hasattr(exc, "error_dict"):
        errors = [
            {"loc": ["body", field], "msg": " ".join(messages), "type": "value_error"}
            for field, messages in exc.message_dict.items()
        ]
    else:
        errors = [{"loc": ["body"], "msg": " ".join(exc.messages), "type": "value_error"}]
    return api.create_response(request, {"detail": errors}, status=422)


@api.exception_handler(RedisUnavailable)
def redis_unavailable(request, exc: RedisUnavailable):
    """Redis is down and this request needs it (position writes, presence): come back later."""
    response = api.create_response(request, {"detail": exc.message}, status=503)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(RateLimited)
def rate_limited(request, exc: RateLimited):
    response = api.create_response(request, {"detail": str(exc), "code": "rate_limited"}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(RequestDataTooBig)
def too_large(request, exc: RequestDataTooBig):
    return api.create_response(request, {"detail": "Request body too large."}, status=413)


@api.exception_handler(NinjaValidationError)
def invalid_request(request, exc: NinjaValidationError):
    """Request validation errors in the same shape as the services' (`["body", field]`)."""
    errors = []
    for error in exc.errors:
        loc = list(error.get("loc", []))
        if len(loc) >= 2 and loc[0] == "body" and loc[1] == "payload":
            loc = ["body", *loc[2:]]
        errors.append({"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "value_error")})
    return api.create_response(request, {"detail": errors}, status=422)


@api.exception_handler(NotPublishable)
def not_publishable(request, exc: NotPublishable):
    return api.create_response(
        request, {"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, status=422
    )


@api.exception_handler(IdempotencyKeyError)
def bad_idempotency_key(request, exc: IdempotencyKeyError):
    return api.create_response(request, {"detail": str(exc)}, status=422)


@api.exception_handler(PermissionDenied)
def forbidden(request, exc: PermissionDenied):
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


@api.exception_handler(Http404)
def not_found(request, exc: Http404):
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


@api.exception_handler(AuthenticationError)
def unauthenticated(request, exc: AuthenticationError):
    return api.create_response(request, {"detail": "Log in or send a valid API token."}, status=401)


@api.exception_handler(Order.DoesNotExist)
@api.exception_handler(Delivery.DoesNotExist)
@api.exception_handler(Rider.DoesNotExist)
def missing_entity(request, exc):
    return api.create_response(request, {"detail": "Not found."}, status=404)
