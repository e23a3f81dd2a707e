"""Inventory: labs, resources and their policies, outages, qualifications."""
