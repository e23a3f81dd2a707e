"""``python -m services.booking migrate|relay|consume|worker``."""

from services.booking.app import NAME, build_runtime
from shared.cli import service_main

if __name__ == "__main__":
    service_main(NAME, build_runtime)
