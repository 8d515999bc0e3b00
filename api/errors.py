"""Every error the API answers with, mapped once: JSON `{"error", "message"}` (422s also list each field)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import Conflict, InvalidRequest, NotFound
from services.store import StoreUnavailable
from trainers.spec import error_path

log = logging.getLogger(__name__)


def error(code: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=code, content={"error": kind, "message": message})


MAX_ERRORS = 20  # a body of 70,000 bad keys is answered with the first few and a count, not megabytes


def invalid(errors: list[tuple[str, str]], total: int | None = None) -> JSONResponse:
    """422 naming each field by its path in the request (`run.train.steps`): the first MAX_ERRORS, and how many
    (`total`, where only the first were named)."""
    total = len(errors) if total is None else total
    fields = [
        {"field": field if field != "(top level)" else "body", "message": msg[:500]}
        for field, msg in errors[:MAX_ERRORS]
    ]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    if total > len(fields):
        message += f"; and {total - len(fields):,} more errors"
    content = {"error": "validation", "message": message, "detail": fields, "error_count": total}
    return JSONResponse(status_code=422, content=content)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        named = [(error_path({**err, "loc": [p for p in err["loc"] if p != "body"]}), err["msg"])
                 for err in errors[:MAX_ERRORS]]  # fmt: skip
        return invalid(named, total=len(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        # the framework's own refusals (a body that is not JSON, an unknown path or method) in the same shape
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        response = error(e.status_code, kinds.get(e.status_code, "http_error"), str(e.detail))
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, e: InvalidRequest) -> JSONResponse:
        return invalid(e.errors)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return error(404, "not_found", str(e))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return error(409, "conflict", str(e))

    @app.exception_handler(StaleDataError)
    async def _changed(_: Request, e: StaleDataError) -> JSONResponse:
        # the row kept changing under a compare-and-set (services.store.changing gave up): nothing was written
        return error(409, "conflict", "the resource changed while the request was applied; try again")

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_: Request, e: StoreUnavailable) -> JSONResponse:
        return error(503, "unavailable", f"database: {e}")

    @app.exception_handler(DatabaseError)
    async def _store_failing(_: Request, e: DatabaseError) -> JSONResponse:
        # a read-only, locked or corrupted database: the service cannot take the request now (nothing stored)
        return error(503, "unavailable", f"database: {str(e.orig)[:300]}")

    @app.exception_handler(IntegrityError)
    @app.exception_handler(ProgrammingError)
    async def _store_misused(_: Request, e: DatabaseError) -> JSONResponse:
        # the database works and refused what this service asked: a bug here, not an unavailable store
        log.error("database refused a statement: %s", e)
        return error(500, "internal", "internal error (logged)")
