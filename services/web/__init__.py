"""The web app: server-rendered pages for researchers and facility managers, a client of the public API only."""
