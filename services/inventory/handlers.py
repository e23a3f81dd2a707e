"""Inventory use cases: one transaction each, the change and its event together."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.inventory import domain
from services.inventory.store import Lab, Outage, Qualification, Resource
from shared.auth import Principal
from shared.errors import Forbidden, NotFound, ValidationFailed
from shared.service import Runtime
from shared.timeutil import now


def _lab(session: Session, lab_id: str) -> Lab:
    lab = session.get(Lab, lab_id)
    if lab is None:
        raise NotFound(f"No lab with id {lab_id}.")
    return lab


def _resource(session: Session, resource_id: str, lock: bool = False) -> Resource:
    resource = session.get(Resource, resource_id, with_for_update=lock)
    if resource is None:
        raise NotFound(f"No resource with id {resource_id}.")
    return resource


def _managed_lab(session: Session, user: Principal, lab_id: str) -> Lab:
    lab = _lab(session, lab_id)
    domain.ensure_can_manage(user, lab.managers)
    return lab


def create_lab(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Register a lab; a manager who creates one is listed among its managers."""
    if not user.is_manager:
        raise Forbidden("Only managers and admins may create labs.")
    domain.check_timezone(data["timezone"])
    managers = list(data.get("managers") or [])
    if not user.is_admin and user.sub not in domain.manager_subs(managers):
        managers.append({"sub": user.sub, "name": user.name, "email": user.email})
    stamp = now()
    lab = Lab(
        id=str(uuid.uuid4()),
        name=data["name"],
        org=data["org"],
        building=data.get("building") or "",
        timezone=data["timezone"],
        managers=managers,
        show_titles=bool(data.get("show_titles", False)),
        version=1,
        created_at=stamp,
        updated_at=stamp,
    )
    with rt.db.begin() as session:
        session.add(lab)
        session.flush()
        snapshot = lab.snapshot()
        rt.events.emit(session, "lab.created", snapshot, subject=lab.id)
    rt.events.committed()
    return snapshot


def update_lab(rt: Runtime, user: Principal, lab_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change a lab's name, building, time zone, managers or title visibility."""
    if "timezone" in changes:
        domain.check_timezone(changes["timezone"])
    with rt.db.begin() as session:
        lab = _managed_lab(session, user, lab_id)
        for key in ("name", "org", "building", "timezone", "managers", "show_titles"):
            if key in changes and changes[key] is not None:
                setattr(lab, key, changes[key])
        lab.version += 1
        lab.updated_at = now()
        session.flush()
        snapshot = lab.snapshot()
        rt.events.emit(session, "lab.updated", snapshot, subject=lab.id)
    rt.events.committed()
    return snapshot


def get_lab(rt: Runtime, lab_id: str) -> dict[str, Any]:
    """One lab."""
    with rt.db.read() as session:
        return _lab(session, lab_id).snapshot()


def create_resource(rt: Runtime, user: Principal, data: dict[str, Any]) -> dict[str, Any]:
    """Add an instrument or room to a lab the caller manages."""
    policy = domain.merged_policy(None, data.get("policy") or {})
    rates = {"internal": 0, "external": 0, "currency": "NOK", **(data.get("rates") or {})}
    stamp = now()
    with rt.db.begin() as session:
        _managed_lab(session, user, data["lab_id"])
        resource = Resource(
            id=str(uuid.uuid4()),
            lab_id=data["lab_id"],
            name=data["name"],
            kind=data["kind"],
            category=data["category"],
            description=data.get("description") or "",
            status="active",
            policy=policy,
            rates=rates,
            version=1,
            created_at=stamp,
            updated_at=stamp,
        )
        session.add(resource)
        session.flush()
        snapshot = resource.snapshot()
        rt.events.emit(session, "resource.created", snapshot, subject=resource.id)
    rt.events.committed()
    return snapshot


def update_resource(rt: Runtime, user: Principal, resource_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change a resource; ``policy`` and ``rates`` merge member by member."""
    with rt.db.begin() as session:
        resource = _resource(session, resource_id, lock=True)
        _managed_lab(session, user, resource.lab_id)
        if "lab_id" in changes and changes["lab_id"] != resource.lab_id:
            raise ValidationFailed([{"field": "lab_id", "message": "a resource cannot move to another lab"}])
        was_retired = resource.status == "retired"
        for key in ("name", "kind", "category", "description", "status"):
            if key in changes and changes[key] is not None:
                setattr(resource, key, changes[key])
        if changes.get("policy") is not None:
            resource.policy = domain.merged_policy(resource.policy, changes["policy"])
        if changes.get("rates") is not None:
            resource.rates = {**resource.rates, **changes["rates"]}
        resource.version += 1
        resource.updated_at = now()
        session.flush()
        snapshot = resource.snapshot()
        rt.events.emit(session, "resource.updated", snapshot, subject=resource.id)
        if resource.status == "retired" and not was_retired:
            rt.events.emit(session, "resource.retired", snapshot, subject=resource.id)
    rt.events.committed()
    return snapshot


def get_resource(rt: Runtime, resource_id: str) -> dict[str, Any]:
    """One resource."""
    with rt.db.read() as session:
        return _resource(session, resource_id).snapshot()


def create_outage(rt: Runtime, user: Principal, resource_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Schedule an outage; the booking service cancels the bookings it overlaps."""
    domain.check_interval(data["start"], data["end"])
    with rt.db.begin() as session:
        resource = _resource(session, resource_id)
        _managed_lab(session, user, resource.lab_id)
        outage = Outage(
            id=str(uuid.uuid4()),
            resource_id=resource_id,
            start_at=data["start"],
            end_at=data["end"],
            reason=data.get("reason") or "",
            created_by=user.sub,
            created_at=now(),
        )
        session.add(outage)
        session.flush()
        snapshot = outage.snapshot()
        rt.events.emit(session, "outage.created", snapshot, subject=resource_id)
    rt.events.committed()
    return snapshot


def delete_outage(rt: Runtime, user: Principal, resource_id: str, outage_id: str) -> None:
    """Lift an outage; its time becomes bookable again."""
    with rt.db.begin() as session:
        resource = _resource(session, resource_id)
        _managed_lab(session, user, resource.lab_id)
        outage = session.get(Outage, outage_id)
        if outage is None or outage.resource_id != resource_id or outage.deleted_at is not None:
            raise NotFound(f"No outage {outage_id} on this resource.")
        outage.deleted_at = now()
        session.flush()
        rt.events.emit(session, "outage.deleted", outage.snapshot(), subject=resource_id)
    rt.events.committed()


def grant_qualification(rt: Runtime, user: Principal, resource_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Record that a user is trained on a resource (granting again renews it)."""
    expires = data.get("expires")
    if expires is not None and expires <= now():
        raise ValidationFailed([{"field": "expires", "message": "must be in the future"}])
    with rt.db.begin() as session:
        resource = _resource(session, resource_id)
        _managed_lab(session, user, resource.lab_id)
        qual = session.get(Qualification, (resource_id, data["sub"]))
        if qual is None:
            qual = Qualification(resource_id=resource_id, sub=data["sub"])
            session.add(qual)
        qual.expires = expires
        qual.granted_by = user.sub
        qual.granted_at = now()
        qual.revoked_at = None
        session.flush()
        snapshot = qual.snapshot()
        rt.events.emit(session, "qualification.granted", snapshot, subject=resource_id)
    rt.events.committed()
    return snapshot


def revoke_qualification(rt: Runtime, user: Principal, resource_id: str, sub: str) -> None:
    """Withdraw a user's qualification on a resource."""
    with rt.db.begin() as session:
        resource = _resource(session, resource_id)
        _managed_lab(session, user, resource.lab_id)
        qual = session.get(Qualification, (resource_id, sub))
        if qual is None or qual.revoked_at is not None:
            raise NotFound(f"{sub} holds no qualification on this resource.")
        qual.revoked_at = now()
        session.flush()
        rt.events.emit(session, "qualification.revoked", qual.snapshot(), subject=resource_id)
    rt.events.committed()
