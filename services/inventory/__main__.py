"""``python -m services.inventory migrate|relay|worker``."""

from services.inventory.app import NAME, build_runtime
from shared.cli import service_main

if __name__ == "__main__":
    service_main(NAME, build_runtime)
