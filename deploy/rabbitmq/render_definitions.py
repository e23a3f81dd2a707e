"""Write a copy of definitions.json whose users have the passwords you choose.

deploy/rabbitmq/definitions.json carries the hashes of the development passwords
that docker-compose.yml uses by default. For any other deployment, set the same
variables that docker-compose.yml passes to the services and render a private copy:

    LABSHARE_RABBITMQ_ADMIN_PASSWORD=...  LABSHARE_INVENTORY_AMQP_PASSWORD=... \\
    LABSHARE_BOOKING_AMQP_PASSWORD=...    LABSHARE_NOTIFY_AMQP_PASSWORD=... \\
    python deploy/rabbitmq/render_definitions.py --out /secure/place/definitions.json

then start compose with ``LABSHARE_RABBITMQ_DEFINITIONS=/secure/place/definitions.json``.
A node imports definitions only for what it does not have yet: to change the password
of an existing user, use ``rabbitmqctl change_password`` as well.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

DEFINITIONS = Path(__file__).resolve().parent / "definitions.json"

#: The environment variable holding each user's password.
PASSWORD_VARIABLES: dict[str, str] = {
    "labshare-admin": "LABSHARE_RABBITMQ_ADMIN_PASSWORD",
    "labshare-inventory": "LABSHARE_INVENTORY_AMQP_PASSWORD",
    "labshare-booking": "LABSHARE_BOOKING_AMQP_PASSWORD",
    "labshare-notify": "LABSHARE_NOTIFY_AMQP_PASSWORD",
}


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("the salt is 4 bytes")
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    """True when ``hashed`` (rabbit_password_hashing_sha256) is the hash of ``password``."""
    raw = base64.b64decode(hashed)
    return password_hash(password, raw[:4]) == hashed


def render(env: Mapping[str, str] | None = None, require_all: bool = True) -> dict:
    """The definitions with every user's password taken from ``env``."""
    env = os.environ if env is None else env
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    missing = []
    for user in definitions["users"]:
        variable = PASSWORD_VARIABLES.get(user["name"])
        password = env.get(variable, "") if variable else ""
        if not password:
            missing.append(variable or user["name"])
            continue
        user["password_hash"] = password_hash(password)
        user["hashing_algorithm"] = "rabbit_password_hashing_sha256"
    if missing and require_all:
        raise ValueError(f"no password given in: {', '.join(missing)}")
    return definitions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the definitions ('-' for standard output)")
    args = parser.parse_args(argv)
    try:
        text = json.dumps(render(), indent=2) + "\n"
    except ValueError as exc:
        parser.error(str(exc))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # The broker in its container (another user id) must be able to read it.
        out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
