"""Checkpoint formats: key maps between the authors' layouts and ours, and safe (non-pickle) conversion."""
