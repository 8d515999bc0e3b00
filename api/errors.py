"""Every error the API answers with, mapped once: JSON `{"error", "message"}` (422s also list each field)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.deps import Unauthorized
from services.errors import Conflict, InvalidRequest, NotFound
from trainers.spec import error_path


def error(code: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=code, content={"error": kind, "message": message})


def invalid(errors: list[tuple[str, str]]) -> JSONResponse:
    """422 naming each field by its path in the request (`run.train.steps`)."""
    fields = [{"field": field if field != "(top level)" else "body", "message": msg} for field, msg in errors]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(status_code=422, content={"error": "validation", "message": message, "detail": fields})


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return invalid(
            [(error_path({**err, "loc": [p for p in err["loc"] if p != "body"]}), err["msg"]) for err in e.errors()]
        )

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, e: InvalidRequest) -> JSONResponse:
        return invalid(e.errors)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return error(404, "not_found", str(e))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return error(409, "conflict", str(e))

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, __: Unauthorized) -> JSONResponse:
        response = error(401, "unauthorized", "a bearer token is required: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
