"""Data between raw hospital files and packed training batches: cleaning, adapters, image I/O, transforms,
packing (the batch contract), the loader, the latent cache and phantoms."""
