"""Inference and training engines around the UniX model: report decoding, image sampling, packed training forward."""
