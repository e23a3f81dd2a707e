"""Booking: bookings and series, approvals, availability and free-slot search."""
