"""Inference: report decoding (`report`), image sampling (`image`) and the user-facing `UniXPipeline` (`pipeline`)."""
