"""WSGI entry point: ``gunicorn services.booking.wsgi:app``."""

from services.booking.app import create_app

app = create_app()
