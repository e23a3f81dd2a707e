"""OpenAPI 3.1 documents generated from the same pydantic models that validate requests."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

PROBLEM = {
    "description": "Problem details (RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


class ApiDoc:
    """Collects operations as the blueprint declares them and renders ``/openapi.json``."""

    def __init__(self, title: str, description: str) -> None:
        self.title = title
        self.description = description
        self.operations: list[dict[str, Any]] = []

    def op(
        self,
        method: str,
        path: str,
        summary: str,
        body: type[BaseModel] | None = None,
        status: int = 200,
        query: tuple[str, ...] = (),
        auth: bool = True,
        content: str = "application/json",
    ):
        """Decorator recording one operation; the function is returned unchanged."""

        def record(fn):
            self.operations.append(
                {
                    "method": method.lower(),
                    "path": path,
                    "summary": summary,
                    "body": body,
                    "status": status,
                    "query": query,
                    "auth": auth,
                    "content": content,
                    "name": fn.__name__,
                    "doc": (fn.__doc__ or "").strip(),
                }
            )
            return fn

        return record

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document."""
        models = {op["body"] for op in self.operations if op["body"] is not None}
        _, defs = models_json_schema(
            [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
            ref_template="#/components/schemas/{model}",
        )
        schemas = dict(defs.get("$defs", {}))
        schemas["Problem"] = {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
                "violations": {"type": "array", "items": {"type": "object"}},
                "conflicts": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["type", "title", "status", "detail"],
        }
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            item: dict[str, Any] = {
                "operationId": op["name"],
                "summary": op["summary"],
                "description": op["doc"],
                "responses": {
                    str(op["status"]): {
                        "description": "Success",
                        "content": {op["content"]: {"schema": {}}},
                    },
                    "default": PROBLEM,
                },
            }
            # A segment may hold more than the parameter, e.g. "{resource_id}.ics".
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"\{([^}/]+)\}", op["path"])
            ]
            params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                       for q in op["query"]]
            if params:
                item["parameters"] = params
            if op["body"] is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{op['body'].__name__}"}}
                    },
                }
            if op["auth"]:
                item["security"] = [{"bearer": []}]
            paths.setdefault(op["path"], {})[op["method"]] = item
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": "1.0.0", "description": self.description},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
        }

    def blueprint(self) -> Blueprint:
        """A blueprint serving ``/openapi.json``."""
        bp = Blueprint(f"openapi_{id(self)}", __name__)
        rendered: list[bytes] = []

        @bp.get("/openapi.json")
        def openapi_json():
            # The operations are fixed once the app is built: render the document once per process.
            if not rendered:
                rendered.append(json.dumps(self.document()).encode())
            return Response(rendered[0], mimetype="application/json")

        return bp
