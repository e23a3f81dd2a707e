"""Demo data for ``make run``: labs of the arena's organisations and their instruments."""

from __future__ import annotations

from sqlalchemy import func, select

from services.inventory import handlers
from services.inventory.store import Lab
from shared.auth import Principal
from shared.service import Runtime

WEEKDAYS_8_16 = {d: [["08:00", "16:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
WEEKDAYS_7_22 = {d: [["07:00", "22:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}

#: Users offered by the dev login; their tokens come from POST /api/v1/dev/token.
USERS = {
    "ada": {"sub": "ada", "name": "Ada Researcher", "email": "ada@ntnu.example.org", "org": "ntnu",
            "roles": ["researcher"]},
    "ola": {"sub": "ola", "name": "Ola Startup", "email": "ola@pulsetech.example.org", "org": "pulsetech",
            "roles": ["researcher"]},
    "imaging-manager": {"sub": "imaging-manager", "name": "Imaging lab manager",
                        "email": "imaging-manager@ntnu.example.org", "org": "ntnu",
                        "roles": ["researcher", "manager"]},
    "admin": {"sub": "admin", "name": "Arena admin", "email": "admin@arena.example.org", "org": "arena",
              "roles": ["admin"]},
}


def _manager(sub: str, name: str, email: str) -> dict[str, str]:
    return {"sub": sub, "name": name, "email": email}


LABS = [
    {
        "lab": {"name": "Cell imaging lab", "org": "ntnu", "building": "Elgeseter 10", "timezone": "Europe/Oslo",
                "managers": [_manager("imaging-manager", "Imaging lab manager", "imaging-manager@ntnu.example.org")]},
        "resources": [
            {"name": "Zeiss LSM 980 confocal", "kind": "equipment", "category": "microscopy/confocal",
             "description": "Airyscan 2, 405/488/561/639 nm lasers, incubation chamber.",
             "policy": {"slot_minutes": 15, "min_minutes": 30, "max_minutes": 240, "horizon_days": 60,
                        "buffer_minutes": 15, "opening_hours": WEEKDAYS_7_22, "requires_qualification": True},
             "rates": {"internal": 450, "external": 1200, "currency": "NOK"}},
            {"name": "Leica Stellaris 8 confocal", "kind": "equipment", "category": "microscopy/confocal",
             "description": "White-light laser, FLIM.",
             "policy": {"slot_minutes": 15, "min_minutes": 30, "max_minutes": 240, "opening_hours": WEEKDAYS_7_22},
             "rates": {"internal": 400, "external": 1100, "currency": "NOK"}},
            {"name": "BD FACSymphony A5 flow cytometer", "kind": "equipment", "category": "cytometry/flow",
             "description": "30-colour analyser.",
             "policy": {"slot_minutes": 30, "min_minutes": 30, "max_minutes": 480, "max_hours_per_week": 12},
             "rates": {"internal": 600, "external": 1500, "currency": "NOK"}},
        ],
    },
    {
        "lab": {"name": "Genomics core", "org": "sintef", "building": "Richard Birkelands vei 3",
                "timezone": "Europe/Oslo",
                "managers": [_manager("genomics-manager", "Genomics core manager", "genomics@sintef.example.org")]},
        "resources": [
            {"name": "Illumina NovaSeq X sequencer", "kind": "equipment", "category": "sequencing/ngs",
             "description": "Runs are reviewed by the core before they are confirmed.",
             "policy": {"slot_minutes": 60, "min_minutes": 60, "max_minutes": 2880, "requires_approval": True,
                        "lead_minutes": 1440, "horizon_days": 120},
             "rates": {"internal": 900, "external": 2500, "currency": "NOK"}},
        ],
    },
    {
        "lab": {"name": "Clinical imaging test bed", "org": "stolav",
                "building": "St. Olavs hospital, Kunnskapssenteret", "timezone": "Europe/Oslo",
                "managers": [_manager("mri-manager", "MRI physicist", "mri@stolav.example.org")]},
        "resources": [
            {"name": "3T MRI test slot", "kind": "room", "category": "imaging/mri",
             "description": "Siemens Prisma for device and sequence testing; phantom work only outside clinical hours.",
             "policy": {"slot_minutes": 60, "min_minutes": 60, "max_minutes": 180, "requires_approval": True,
                        "requires_qualification": True, "buffer_minutes": 30,
                        "opening_hours": {d: [["16:00", "22:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}},
             "rates": {"internal": 3000, "external": 6500, "currency": "NOK"}},
        ],
    },
    {
        "lab": {"name": "Shared wet lab", "org": "trondheim", "building": "Elgeseter gate 30",
                "timezone": "Europe/Oslo",
                "managers": [_manager("wetlab-manager", "Wet lab coordinator", "wetlab@trondheim.example.org")]},
        "resources": [
            {"name": f"Wet lab bench {n}", "kind": "room", "category": "wetlab/bench",
             "description": "Bench with fume hood access, BSL-1.",
             "policy": {"slot_minutes": 60, "min_minutes": 60, "max_minutes": 600, "opening_hours": WEEKDAYS_8_16},
             "rates": {"internal": 100, "external": 250, "currency": "NOK"}}
            for n in range(1, 7)
        ],
    },
    {
        "lab": {"name": "PulseTech prototyping room", "org": "pulsetech", "building": "Elgeseter 10",
                "timezone": "Europe/Oslo",
                "managers": [_manager("pulsetech-lead", "PulseTech lab lead", "lab@pulsetech.example.org")]},
        "resources": [
            {"name": "Keysight EMC pre-compliance bench", "kind": "equipment", "category": "testing/emc",
             "description": "For medical device pre-compliance tests (IEC 60601-1-2).",
             "policy": {"slot_minutes": 30, "min_minutes": 60, "max_minutes": 480},
             "rates": {"internal": 0, "external": 800, "currency": "NOK"}},
        ],
    },
]

SEEDER = Principal(sub="labshare-seed", name="Demo data", org="arena", roles=("admin",))


def seed(inventory: Runtime) -> int:
    """Create the demo labs and resources unless inventory already has labs; returns how many labs it made."""
    with inventory.db.read() as session:
        if session.execute(select(func.count()).select_from(Lab)).scalar_one():
            return 0
    for entry in LABS:
        lab = handlers.create_lab(inventory, SEEDER, entry["lab"])
        for resource in entry["resources"]:
            created = handlers.create_resource(inventory, SEEDER, {**resource, "lab_id": lab["id"]})
            if resource["policy"].get("requires_qualification"):
                handlers.grant_qualification(inventory, SEEDER, created["id"], {"sub": "ada"})
    return len(LABS)
