"""All weight I/O: the authors' key layouts and ours, release folders, the VAE's safetensors files and its one-time,
opt-in pickle conversion."""
