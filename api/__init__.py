"""HTTP only: FastAPI app factory, routers, request/response schemas, auth; and the `myopia` CLI."""
