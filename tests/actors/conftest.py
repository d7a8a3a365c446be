"""Fixtures for the actor tests: the loopback dataset server."""

from tests.fakes.fake_data_server import data_server

__all__ = ["data_server"]
