"""Shared fixtures. Real services (Redis, Docker) live in tests/fixtures/ as plugins."""

pytest_plugins = ["tests.fixtures.services"]
