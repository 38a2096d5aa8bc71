"""Serving: the web app and the REST server, each given a `UniXPipeline` (arrive with the user-surface issue)."""
