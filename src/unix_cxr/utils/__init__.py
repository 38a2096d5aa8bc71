"""Helpers every layer may use: the one atomic writer (`atomic`) and provenance of results (`provenance`)."""
