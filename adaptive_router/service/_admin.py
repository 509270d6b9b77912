"""``POST /admin/reload``: read the settings file again, behind its own keys (``server.admin_keys``).

    curl -X POST -H "Authorization: Bearer $ADMIN_KEY" http://127.0.0.1:8000/admin/reload

200 with what changed; 422 naming the wrong key when the file does not validate (the running
settings stay); 403 while no admin key is set; 401 without a valid one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .._errors import ApiError
from ..pipeline._operations import Operations
from ._http import authorize, json_response, running

__all__ = ["admin_reload"]


async def admin_reload(request: Request) -> Response:
    keys = running(request).service.settings.server.admin_keys
    if not keys:
        raise ApiError(
            403,
            "the admin endpoints are off: set server.admin_keys (or send SIGHUP to reload)",
            None,
            "permission_error",
            "admin_disabled",
        )
    authorize(request, [key.encode() for key in keys])
    ops: Operations = request.state.ops
    report = await ops.reloader.reload("admin")
    if not report.ok:
        message = f"settings not reloaded, the running ones stay: {report.error}"
        raise ApiError(422, message, report.field or "settings file", code="invalid_settings")
    return json_response(report.as_dict())
