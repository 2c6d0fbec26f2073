"""The server's OpenAPI description, with the request bodies it parses by hand.

The POST routes read their bodies themselves (so that every malformed request gets OpenAI's
error shape, never FastAPI's 422), so FastAPI cannot see what they accept. This adds each
route's body schema, from the pydantic model its parser validates with, to ``/openapi.json``:
clients, generators and fuzzers (the tests fuzz the API from it) read what the server reads.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

__all__ = ["document_request_bodies"]

_REF = "#/components/schemas/{model}"


def document_request_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Describe ``bodies[path]`` as the JSON request body of ``POST path`` in ``app.openapi()``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            name = model.__name__.lstrip("_")
            body = model.model_json_schema(ref_template=_REF)
            components.update(body.pop("$defs", {}))
            components[name] = body
            operation = schema.get("paths", {}).get(path, {}).get("post")
            if operation is None:
                continue
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
            }
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", {"description": "a malformed request (OpenAI error)"})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
