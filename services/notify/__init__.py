"""Notify: e-mail with calendar invitations, reminders and webhooks, driven by events."""
