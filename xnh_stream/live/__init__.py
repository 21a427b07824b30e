"""The live side: the stream's driver and its runtime seam (:mod:`.driver`, :mod:`.runtime`, :mod:`.workers`,
:mod:`.sources`), and a read-only live page of a running scan, served by the pipeline (stdlib http.server in
a thread). Only the page is imported here: the driver loads the chain when it is asked for."""

from .server import DEFAULT_PORT, LivePage, encode_png, to_png

__all__ = ["DEFAULT_PORT", "LivePage", "encode_png", "to_png"]
