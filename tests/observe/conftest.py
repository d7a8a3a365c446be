"""Fixtures of the observability tests: the loopback OTLP collector."""

from tests.fakes.fake_otlp import otlp_collector

__all__ = ["otlp_collector"]
