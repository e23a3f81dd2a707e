"""Inventory HTTP API: parse → handler → serialize."""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.inventory import handlers, store
from shared.auth import current_user
from shared.calendar import feed_links
from shared.http import Timestamp, json_response, page, page_params, parse_body, query_choice, query_time
from shared.openapi import ApiDoc
from shared.service import runtime_of

Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Minutes = Annotated[int, Field(ge=1, le=10080)]
HHMM = Annotated[str, StringConstraints(pattern=r"^\d\d:\d\d$")]

doc = ApiDoc("labshare inventory", "Labs, resources, policies, outages and qualifications.")
bp = Blueprint("inventory", __name__)


@bp.before_request
def _authenticate() -> None:
    """Every route here needs a valid bearer token, checked before the body is read."""
    current_user()


def _with_feed(kind: str, entity: dict) -> dict:
    """The entity with the ``feed_url`` and ``webcal_url`` of its public calendar feed.

    Added to API answers only, not to event snapshots: the links depend on where
    labshare is served (``LABSHARE_PUBLIC_URL``), not on the entity.
    """
    return {**entity, **feed_links(runtime_of().settings, kind, entity["id"])}


def _lab(entity: dict) -> dict:
    return _with_feed("labs", entity)


def _resource(entity: dict) -> dict:
    return _with_feed("resources", entity)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManagerIn(Strict):
    sub: Text200
    name: str = Field(default="", max_length=200)
    email: str = Field(default="", max_length=320)


class LabIn(Strict):
    """A new lab."""

    name: Text200
    org: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    building: str = Field(default="", max_length=200)
    timezone: Text200 = "Europe/Oslo"
    managers: list[ManagerIn] = Field(default_factory=list, max_length=100)
    show_titles: bool = False


class LabPatch(Strict):
    """Changes to a lab; absent members stay as they are."""

    name: Text200 | None = None
    org: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    building: str | None = Field(default=None, max_length=200)
    timezone: Text200 | None = None
    managers: list[ManagerIn] | None = Field(default=None, max_length=100)
    show_titles: bool | None = None


class PolicyIn(Strict):
    """Booking rules; every member is optional and defaults as documented."""

    slot_minutes: Annotated[int, Field(ge=1, le=1440)] = 15
    min_minutes: Minutes = 15
    max_minutes: Minutes = 480
    lead_minutes: Annotated[int, Field(ge=0, le=525600)] = 0
    horizon_days: Annotated[int, Field(ge=1, le=3650)] = 90
    buffer_minutes: Annotated[int, Field(ge=0, le=1440)] = 0
    requires_approval: bool = False
    requires_qualification: bool = False
    opening_hours: dict[str, list[list[HHMM]]] | None = None
    max_hours_per_week: Annotated[float, Field(gt=0, le=168)] | None = None
    checkin_required: bool = False
    checkin_grace_minutes: Annotated[int, Field(ge=0, le=1440)] = 15


class RatesIn(Strict):
    internal: Annotated[float, Field(ge=0)] = 0
    external: Annotated[float, Field(ge=0)] = 0
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "NOK"


class ResourceIn(Strict):
    """A new resource."""

    lab_id: Text200
    name: Text200
    kind: Literal["equipment", "room"] = "equipment"
    category: Text200
    description: str = Field(default="", max_length=10000)
    policy: PolicyIn = Field(default_factory=PolicyIn)
    rates: RatesIn = Field(default_factory=RatesIn)


class ResourcePatch(Strict):
    """Changes to a resource; ``policy`` and ``rates`` merge member by member."""

    lab_id: str | None = None
    name: Text200 | None = None
    kind: Literal["equipment", "room"] | None = None
    category: Text200 | None = None
    description: str | None = Field(default=None, max_length=10000)
    status: Literal["active", "maintenance", "retired"] | None = None
    policy: PolicyIn | None = None
    rates: RatesIn | None = None


class OutageIn(Strict):
    """A period the resource cannot be used."""

    start: Timestamp
    end: Timestamp
    reason: str = Field(default="", max_length=2000)


class QualificationIn(Strict):
    """A user qualified on a resource, optionally until ``expires``."""

    sub: Text200
    expires: Timestamp | None = None


@doc.op("post", "/api/v1/labs", "Create a lab", body=LabIn, status=201)
@bp.post("/api/v1/labs")
def create_lab() -> Response:
    """Managers and admins register a lab."""
    body = parse_body(LabIn)
    lab = _lab(handlers.create_lab(runtime_of(), current_user(), body.model_dump()))
    return json_response(lab, 201, {"Location": f"/api/v1/labs/{lab['id']}"})


@doc.op("get", "/api/v1/labs", "List labs", query=("org", "limit", "cursor"))
@bp.get("/api/v1/labs")
def list_labs() -> Response:
    """Every lab, by name."""
    limit, cursor = page_params()
    with runtime_of().db.read() as session:
        rows = store.list_labs(session, request.args.get("org"), limit, cursor)
        return json_response(page([_lab(r.snapshot()) for r in rows], limit, lambda x: [x["name"], x["id"]]))


@doc.op("get", "/api/v1/labs/{lab_id}", "Get a lab")
@bp.get("/api/v1/labs/<lab_id>")
def get_lab(lab_id: str) -> Response:
    """One lab."""
    return json_response(_lab(handlers.get_lab(runtime_of(), lab_id)))


@doc.op("patch", "/api/v1/labs/{lab_id}", "Change a lab", body=LabPatch)
@bp.patch("/api/v1/labs/<lab_id>")
def patch_lab(lab_id: str) -> Response:
    """A manager of the lab (or an admin) changes it."""
    body = parse_body(LabPatch)
    return json_response(
        _lab(handlers.update_lab(runtime_of(), current_user(), lab_id, body.model_dump(exclude_unset=True)))
    )


@doc.op("post", "/api/v1/resources", "Create a resource", body=ResourceIn, status=201)
@bp.post("/api/v1/resources")
def create_resource() -> Response:
    """A manager of the lab adds an instrument or room."""
    body = parse_body(ResourceIn)
    data = body.model_dump(exclude_unset=True)
    data["kind"] = body.kind
    resource = _resource(handlers.create_resource(runtime_of(), current_user(), data))
    return json_response(resource, 201, {"Location": f"/api/v1/resources/{resource['id']}"})


@doc.op("get", "/api/v1/resources", "List resources", query=("lab_id", "category", "status", "q", "limit", "cursor"))
@bp.get("/api/v1/resources")
def list_resources() -> Response:
    """Resources filtered by lab, category (and its sub-categories), status or free text."""
    limit, cursor = page_params()
    status = query_choice("status", ("active", "maintenance", "retired"))
    with runtime_of().db.read() as session:
        rows = store.list_resources(
            session,
            lab_id=request.args.get("lab_id"),
            category=request.args.get("category"),
            status=status,
            q=request.args.get("q"),
            limit=limit,
            after=cursor,
        )
        return json_response(page([_resource(r.snapshot()) for r in rows], limit,
                                  lambda x: [x["name"], x["id"]]))


@doc.op("get", "/api/v1/resources/{resource_id}", "Get a resource")
@bp.get("/api/v1/resources/<resource_id>")
def get_resource(resource_id: str) -> Response:
    """One resource with its policy and rates."""
    return json_response(_resource(handlers.get_resource(runtime_of(), resource_id)))


@doc.op("patch", "/api/v1/resources/{resource_id}", "Change a resource", body=ResourcePatch)
@bp.patch("/api/v1/resources/<resource_id>")
def patch_resource(resource_id: str) -> Response:
    """A manager changes a resource's details, status, policy or rates."""
    body = parse_body(ResourcePatch)
    changes = body.model_dump(exclude_unset=True)
    if body.policy is not None:
        changes["policy"] = body.policy.model_dump(exclude_unset=True)
    if body.rates is not None:
        changes["rates"] = body.rates.model_dump(exclude_unset=True)
    return json_response(_resource(handlers.update_resource(runtime_of(), current_user(), resource_id, changes)))


@doc.op("post", "/api/v1/resources/{resource_id}/outages", "Schedule an outage", body=OutageIn, status=201)
@bp.post("/api/v1/resources/<resource_id>/outages")
def create_outage(resource_id: str) -> Response:
    """Overlapping confirmed or pending bookings are cancelled with ``cancel_reason: outage``."""
    body = parse_body(OutageIn)
    outage = handlers.create_outage(runtime_of(), current_user(), resource_id, body.model_dump())
    return json_response(
        outage, 201, {"Location": f"/api/v1/resources/{resource_id}/outages/{outage['id']}"}
    )


@doc.op("get", "/api/v1/resources/{resource_id}/outages", "List outages", query=("from", "to"))
@bp.get("/api/v1/resources/<resource_id>/outages")
def list_outages(resource_id: str) -> Response:
    """Live outages of a resource."""
    rt = runtime_of()
    handlers.get_resource(rt, resource_id)
    with rt.db.read() as session:
        rows = store.list_outages(session, resource_id, query_time("from"), query_time("to"))
        return json_response({"items": [o.snapshot() for o in rows], "next": None})


@doc.op("delete", "/api/v1/resources/{resource_id}/outages/{outage_id}", "Lift an outage", status=204)
@bp.delete("/api/v1/resources/<resource_id>/outages/<outage_id>")
def delete_outage(resource_id: str, outage_id: str) -> Response:
    """The outage's time becomes bookable again."""
    handlers.delete_outage(runtime_of(), current_user(), resource_id, outage_id)
    return Response(status=204)


@doc.op("post", "/api/v1/resources/{resource_id}/qualifications", "Grant a qualification",
        body=QualificationIn, status=201)
@bp.post("/api/v1/resources/<resource_id>/qualifications")
def grant_qualification(resource_id: str) -> Response:
    """Record that a user is trained on the resource."""
    body = parse_body(QualificationIn)
    qual = handlers.grant_qualification(runtime_of(), current_user(), resource_id, body.model_dump())
    return json_response(qual, 201)


@doc.op("get", "/api/v1/resources/{resource_id}/qualifications", "List qualifications")
@bp.get("/api/v1/resources/<resource_id>/qualifications")
def list_qualifications(resource_id: str) -> Response:
    """Who is qualified on the resource, with expiry."""
    rt = runtime_of()
    handlers.get_resource(rt, resource_id)
    with rt.db.read() as session:
        rows = store.list_qualifications(session, resource_id)
        return json_response({"items": [q.snapshot() for q in rows], "next": None})


@doc.op("delete", "/api/v1/resources/{resource_id}/qualifications/{sub}", "Revoke a qualification", status=204)
@bp.delete("/api/v1/resources/<resource_id>/qualifications/<sub>")
def revoke_qualification(resource_id: str, sub: str) -> Response:
    """Withdraw a user's qualification."""
    handlers.revoke_qualification(runtime_of(), current_user(), resource_id, sub)
    return Response(status=204)
