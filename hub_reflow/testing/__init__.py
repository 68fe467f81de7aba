"""Offline test fixtures shipped with the package: the tiny world and a local Hub-compatible server."""
