"""UniX model modules: vision tower + connector, decoder, VAE and their building blocks."""
