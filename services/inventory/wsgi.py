"""WSGI entry point: ``gunicorn services.inventory.wsgi:app``."""

from services.inventory.app import create_app

app = create_app()
