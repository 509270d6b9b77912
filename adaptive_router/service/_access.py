"""Who may see and do what: model ids a client may name, who may score a request, who reads
``/ready`` in full. Each answers the way OpenAI's API does where it has an answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .._errors import ApiError
from .._settings import Settings
from ..core._router import Router
from ..state._feedback import Answered, owner_of
from ._http import authorize, json_response, running

__all__ = ["is_admin", "known_model", "may_score", "retrieve_model", "sees_detail"]


def known_model(model: str, router: Router) -> None:
    """404 ``model_not_found`` (OpenAI's answer) for a model id the catalogue does not have,
    ``auto:<mode>`` with a mode the settings do not name included."""
    if not (_routes(model, router) or model in router.catalogue.index):
        raise _not_found(model)


def _routes(model: str, router: Router) -> bool:
    """``auto`` or ``auto:<mode>`` for a mode the router has (``default`` is always one)."""
    if model == "auto":
        return True
    mode = model.removeprefix("auto:")
    return mode != model and (mode == "default" or mode in router.config.modes)


def _not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model {model!r} does not exist; use 'auto' to route, or one of the ids GET /v1/models lists",
        "model",
        code="model_not_found",
    )


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{id}``: OpenAI's model object, or 404 ``model_not_found``."""
    service = running(request).service
    authorize(request, service.keys)
    model: str = request.path_params["model"]
    router = service.router
    if _routes(model, router):
        owner = "adaptive-router"
    elif model in router.catalogue.index:
        owner = model.split("/", 1)[0]
    else:
        raise _not_found(model)
    return json_response({"id": model, "object": "model", "created": 0, "owned_by": owner})


def is_admin(api_key: str | None, settings: Settings) -> bool:
    """An admin key (``server.admin_keys``): may reload, and score any key's request."""
    return api_key is not None and api_key in settings.server.admin_keys


def may_score(answered: Answered, api_key: str | None, settings: Settings) -> bool:
    """The key that made the request may score it, and so may an admin key (``server.admin_keys``)."""
    return is_admin(api_key, settings) or answered.owner == owner_of(api_key)


def sees_detail(request: Request) -> bool:
    """Whether ``/ready`` may show its detail: always without router keys, else with a valid key."""
    keys = running(request).service.keys
    if not keys:
        return True
    try:
        authorize(request, keys)
    except ApiError:
        return False
    return True
