"""The small library every labshare service uses: config, database, events, auth, errors."""
