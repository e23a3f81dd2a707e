"""labshare's three services; ``python -m services`` runs them all in one process for development."""
