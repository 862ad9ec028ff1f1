"""Batch audits: many models, one SQLite store, run in parallel locally or on a Ray cluster."""
