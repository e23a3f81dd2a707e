"""Inventory over HTTP: labs, resources, policies, outages, qualifications, permissions and errors."""

from __future__ import annotations

from tests.harness import next_weekday, rfc

RESEARCHER = "ada"
OTHER_MANAGER = ("other-manager", ("researcher", "manager"), "sintef")
ADMIN = ("root", ("admin",), "arena")


def test_lab_lifecycle(stack):
    lab = stack.make_lab(name="Cell imaging lab")
    assert lab["timezone"] == "Europe/Oslo"
    assert lab["managers"][0]["sub"] == "lab-manager"
    got = stack.get(f"/api/v1/labs/{lab['id']}", RESEARCHER)
    assert got.status_code == 200 and got.get_json()["name"] == "Cell imaging lab"
    listed = stack.get("/api/v1/labs", RESEARCHER).get_json()
    assert [x["id"] for x in listed["items"]] == [lab["id"]] and listed["next"] is None
    patched = stack.patch(f"/api/v1/labs/{lab['id']}", stack.MANAGER, {"building": "Elgeseter 30"})
    assert patched.status_code == 200 and patched.get_json()["building"] == "Elgeseter 30"
    assert patched.get_json()["version"] == 2


def test_only_managers_create_labs_and_only_their_own_labs_change(stack):
    body = {"name": "X", "org": "ntnu", "timezone": "Europe/Oslo"}
    denied = stack.post("/api/v1/labs", RESEARCHER, body)
    assert denied.status_code == 403
    assert denied.headers["Content-Type"] == "application/problem+json"
    lab = stack.make_lab()
    assert stack.patch(f"/api/v1/labs/{lab['id']}", OTHER_MANAGER, {"name": "Mine now"}).status_code == 403
    assert stack.patch(f"/api/v1/labs/{lab['id']}", ADMIN, {"name": "Admin may"}).status_code == 200
    # A manager who creates a lab without listing themselves is added, so they keep access to it.
    own = stack.post("/api/v1/labs", OTHER_MANAGER, {**body, "managers": []}).get_json()
    assert [m["sub"] for m in own["managers"]] == ["other-manager"]


def test_resource_with_full_policy_and_defaults(stack):
    lab = stack.make_lab()
    resp = stack.post("/api/v1/resources", stack.MANAGER, {
        "lab_id": lab["id"], "name": "Zeiss LSM 980 confocal", "kind": "equipment",
        "category": "microscopy/confocal", "description": "Airyscan",
        "policy": {"slot_minutes": 30, "min_minutes": 30, "max_minutes": 240,
                   "opening_hours": {"mon": [["08:00", "16:00"]]}, "max_hours_per_week": 10},
        "rates": {"internal": 450, "external": 1200, "currency": "NOK"},
    })
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"].endswith(resp.get_json()["id"])
    res = resp.get_json()
    assert res["status"] == "active"
    assert res["policy"] == {
        "slot_minutes": 30, "min_minutes": 30, "max_minutes": 240, "lead_minutes": 0, "horizon_days": 90,
        "buffer_minutes": 0, "requires_approval": False, "requires_qualification": False,
        "opening_hours": {"mon": [["08:00", "16:00"]]}, "max_hours_per_week": 10, "checkin_required": False,
        "checkin_grace_minutes": 15,
    }
    # PATCH merges policy members; status changes.
    patched = stack.patch(f"/api/v1/resources/{res['id']}", stack.MANAGER,
                          {"policy": {"buffer_minutes": 15}, "status": "maintenance"}).get_json()
    assert patched["policy"]["buffer_minutes"] == 15 and patched["policy"]["slot_minutes"] == 30
    assert patched["status"] == "maintenance"


def test_resource_filters(stack):
    lab = stack.make_lab()
    a = stack.make_resource(lab["id"], name="Alpha confocal", category="microscopy/confocal")
    b = stack.make_resource(lab["id"], name="Beta cytometer", category="cytometry/flow")
    stack.patch(f"/api/v1/resources/{b['id']}", stack.MANAGER, {"status": "retired"})

    def names(query):
        return [r["name"] for r in stack.get(f"/api/v1/resources?{query}", RESEARCHER).get_json()["items"]]

    assert names(f"lab_id={lab['id']}") == ["Alpha confocal", "Beta cytometer"]
    assert names("category=microscopy") == ["Alpha confocal"]
    assert names("category=microscopy/confocal") == ["Alpha confocal"]
    assert names("status=retired") == ["Beta cytometer"]
    assert names("q=CYTO") == ["Beta cytometer"]
    first = stack.get(f"/api/v1/resources?lab_id={lab['id']}&limit=1", RESEARCHER).get_json()
    assert [r["id"] for r in first["items"]] == [a["id"]] and first["next"]
    second = stack.get(f"/api/v1/resources?lab_id={lab['id']}&limit=1&cursor={first['next']}", RESEARCHER).get_json()
    assert [r["id"] for r in second["items"]] == [b["id"]] and second["next"] is None


def test_policy_and_shape_errors_are_422_with_fields(stack):
    lab = stack.make_lab()
    bad = stack.post("/api/v1/resources", stack.MANAGER, {
        "lab_id": lab["id"], "name": "X", "category": "c",
        "policy": {"min_minutes": 60, "max_minutes": 30, "opening_hours": {"monday": [["08:00", "16:00"]]}},
    })
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.get_json()["errors"]}
    assert {"policy.max_minutes", "policy.opening_hours"} <= fields
    wrong_kind = stack.post("/api/v1/resources", stack.MANAGER,
                            {"lab_id": lab["id"], "name": "X", "category": "c", "kind": "spaceship"})
    assert wrong_kind.status_code == 422
    assert wrong_kind.get_json()["errors"][0]["field"] == "kind"
    bad_tz = stack.post("/api/v1/labs", stack.MANAGER, {"name": "X", "org": "ntnu", "timezone": "Mars/Olympus"})
    assert bad_tz.status_code == 422 and bad_tz.get_json()["errors"][0]["field"] == "timezone"
    unknown_lab = stack.post("/api/v1/resources", stack.MANAGER, {"lab_id": "nope", "name": "X", "category": "c"})
    assert unknown_lab.status_code == 404


def test_outages_and_qualifications(stack):
    res = stack.make_resource()
    start, end = next_weekday(2, 8), next_weekday(2, 12)
    created = stack.post(f"/api/v1/resources/{res['id']}/outages", stack.MANAGER,
                         {"start": rfc(start), "end": rfc(end), "reason": "Laser service"})
    assert created.status_code == 201
    outage = created.get_json()
    listed = stack.get(f"/api/v1/resources/{res['id']}/outages", RESEARCHER).get_json()["items"]
    assert [o["id"] for o in listed] == [outage["id"]] and listed[0]["reason"] == "Laser service"
    assert stack.post(f"/api/v1/resources/{res['id']}/outages", RESEARCHER,
                      {"start": rfc(start), "end": rfc(end)}).status_code == 403
    backwards = stack.post(f"/api/v1/resources/{res['id']}/outages", stack.MANAGER,
                           {"start": rfc(end), "end": rfc(start)})
    assert backwards.status_code == 422
    assert stack.delete(f"/api/v1/resources/{res['id']}/outages/{outage['id']}", stack.MANAGER).status_code == 204
    assert stack.get(f"/api/v1/resources/{res['id']}/outages", RESEARCHER).get_json()["items"] == []
    assert stack.delete(f"/api/v1/resources/{res['id']}/outages/{outage['id']}", stack.MANAGER).status_code == 404

    granted = stack.post(f"/api/v1/resources/{res['id']}/qualifications", stack.MANAGER, {"sub": "ada"})
    assert granted.status_code == 201 and granted.get_json()["sub"] == "ada"
    quals = stack.get(f"/api/v1/resources/{res['id']}/qualifications", RESEARCHER).get_json()["items"]
    assert [q["sub"] for q in quals] == ["ada"]
    assert stack.delete(f"/api/v1/resources/{res['id']}/qualifications/ada", stack.MANAGER).status_code == 204
    assert stack.get(f"/api/v1/resources/{res['id']}/qualifications", RESEARCHER).get_json()["items"] == []
    assert stack.delete(f"/api/v1/resources/{res['id']}/qualifications/ada", stack.MANAGER).status_code == 404


def test_inventory_changes_become_events(stack):
    """Every inventory change is written to its outbox in the same transaction and published."""
    from sqlalchemy import select

    from services.inventory.store import OUTBOX

    res = stack.make_resource()
    stack.patch(f"/api/v1/resources/{res['id']}", stack.MANAGER, {"status": "retired"})
    start, end = next_weekday(2, 8), next_weekday(2, 9)
    stack.post(f"/api/v1/resources/{res['id']}/outages", stack.MANAGER, {"start": rfc(start), "end": rfc(end)})
    stack.post(f"/api/v1/resources/{res['id']}/qualifications", stack.MANAGER, {"sub": "ada"})
    stack.delete(f"/api/v1/resources/{res['id']}/qualifications/ada", stack.MANAGER)
    db = stack.runtimes["inventory"].db

    def published():
        with db.read() as s:
            rows = s.execute(select(OUTBOX.c.type, OUTBOX.c.published_at).order_by(OUTBOX.c.id)).all()
        return rows if all(r.published_at for r in rows) else None

    rows = stack.eventually(published, what="inventory outbox to drain")
    assert [r.type for r in rows] == [
        "lab.created", "resource.created", "resource.updated", "resource.retired", "outage.created",
        "qualification.granted", "qualification.revoked",
    ]
