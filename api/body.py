"""Request bodies validated in a worker thread: FastAPI validates a declared body on the event loop, where a
large, invalid one would hold every other request (and /healthz) until it is done. The guard has read the body and
parsed it once (api/guard.py); a sync dependency validates it, and FastAPI runs sync dependencies in its pool.
The OpenAPI schema still names the model (`body_schema` on the route, the models in the app's components)."""

from __future__ import annotations

import email.message
import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

M = TypeVar("M", bound=BaseModel)
NOT_JSON = object()  # what the guard stores for a body it could not parse
REF = "#/components/schemas/{model}"


def _is_json(content_type: str | None) -> bool:
    """FastAPI's own rule: application/json or application/*+json (no content type: not JSON). A text/plain body
    is never parsed, so a browser page cannot post a sweep without a preflight."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def validate(model: type[M], request: Request) -> M:
    """The body as `model`, or the RequestValidationError FastAPI would raise (located under `body`)."""
    state = request.scope.get("state", {})
    raw, parsed = state.get("body", b""), state.get("json", NOT_JSON)
    is_json = _is_json(request.headers.get("content-type"))
    if not raw or (is_json and parsed is None):  # (FastAPI takes a JSON null for no body)
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if is_json and parsed is NOT_JSON:
        raise RequestValidationError([_json_error(raw)])
    try:
        return model.model_validate(parsed if is_json else raw)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def _json_error(raw: bytes) -> dict[str, Any]:
    """The error for a body that does not parse, saying where and why (the guard kept only that it failed)."""
    try:
        json.loads(raw)
        why = ""
    except json.JSONDecodeError as e:
        why = f": {e.msg} at character {e.pos}"
    except (ValueError, RecursionError) as e:  # not UTF-8, nested too deep, an integer of too many digits
        why = f": {str(e)[:200]}"
    return {"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error{why}"}


def json_body(model: type[M]) -> Any:
    """`body: json_body(SweepRequest)` in a route: the body validated as the model, off the event loop."""

    def dependency(request: Request) -> BaseModel:  # sync: FastAPI runs it in a worker thread
        return validate(model, request)

    return Annotated[model, Depends(dependency)]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The route's `openapi_extra`: its request body is `model` (registered in the app's components)."""
    ref = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def register(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Put `models` (and what they hold) in the app's OpenAPI components, as FastAPI would for declared bodies."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema

    app.openapi = openapi
