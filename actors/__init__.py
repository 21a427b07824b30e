"""Thin Ray actors that wire the :mod:`xnh_stream` core into a live stream."""
