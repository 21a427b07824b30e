"""A read-only live page of a running scan, served by the pipeline (stdlib http.server in a thread)."""

from .server import DEFAULT_PORT, LivePage, encode_png, to_png

__all__ = ["DEFAULT_PORT", "LivePage", "encode_png", "to_png"]
