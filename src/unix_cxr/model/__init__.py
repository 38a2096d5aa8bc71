"""The UniX model: it only computes (no files, no noise, no losses). Decoder, attention, masks, RoPE, embeddings,
vision tower + connector and the VAE module."""
