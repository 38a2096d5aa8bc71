"""Data between raw hospital files and packed training batches: cleaning, adapters, image I/O, phantoms."""
