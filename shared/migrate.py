"""Alembic, run per service against that service's own database or schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, text

from shared.config import Settings
from shared.db import admin_engine, psycopg_url

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def alembic_config(service: str, settings: Settings) -> Config:
    """The Alembic config of one service, pointing at its database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    cfg.attributes["labshare_url"] = settings.database_url_for(service)
    cfg.attributes["labshare_schema"] = settings.schema_for(service)
    return cfg


def upgrade(service: str, settings: Settings, revision: str = "head") -> None:
    """Bring one service's schema up to ``revision`` (creating the PostgreSQL schema first)."""
    schema = settings.schema_for(service)
    if schema:
        engine = admin_engine(settings.database_url_for(service))
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        engine.dispose()
    command.upgrade(alembic_config(service, settings), revision)


def run_env(context, target_metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py`` (online mode only).

    On PostgreSQL an advisory lock keeps two replicas from migrating at once.
    """
    cfg = context.config
    url: str = cfg.attributes["labshare_url"]
    schema: str | None = cfg.attributes.get("labshare_schema")
    connect_args = {"options": f"-csearch_path={schema},public"} if schema else {}
    engine = create_engine(psycopg_url(url), connect_args=connect_args)
    with engine.connect() as connection:
        if schema:
            connection.execute(text("SELECT pg_advisory_lock(hashtext(:s))"), {"s": f"labshare.{schema}"})
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        if schema:
            connection.execute(text("SELECT pg_advisory_unlock(hashtext(:s))"), {"s": f"labshare.{schema}"})
            connection.commit()
    engine.dispose()
