from alembic import context

from services.booking.store import Base
from shared.migrate import run_env

run_env(context, Base.metadata)
