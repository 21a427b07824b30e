"""Live page: latest orthogonal slices, phase map of the latest angle, FSC curve, dose, drift, alerts.

:class:`LivePage` serves, on a local address, a single HTML page whose script polls ``/state.json``
every second and redraws: progress per distance, the alerts, the running FSC curve and resolution
against the fraction of angles, dose and drift figures, and the images (``/img/NAME.png``) the pipeline
published last. It is read-only: only GET is answered (other methods get 405). The stream calls
:meth:`LivePage.publish` with its progress dictionary and images as it runs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .page import PAGE

log = logging.getLogger(__name__)

#: Default port of ``--live-port`` (the command line turns the page off with 0; ``LivePage(port=0)`` picks a free port).
DEFAULT_PORT = 8765


#: Percentiles of an image's finite values shown black and white (:func:`to_png`).
GREY_PERCENTILES = (1.0, 99.0)


def encode_png(image: Any, lo_pct: float = GREY_PERCENTILES[0],
               hi_pct: float = GREY_PERCENTILES[1]) -> tuple[bytes, tuple[float, float] | None]:
    """An 8-bit grey PNG of a 2-D array, contrast stretched between two percentiles (NaN as black), and the
    values shown black and white (None when the image has no finite value).

    Parameters
    ----------
    image : array_like
        A non-empty 2-D array.
    lo_pct, hi_pct : float
        Percentiles of the finite values drawn black (0) and white (255).

    Returns
    -------
    png : bytes
    grey : (float, float) or None
        The values at ``lo_pct`` and ``hi_pct``: the grey-level range the PNG shows.
    """
    from PIL import Image  # noqa: PLC0415

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"live page images must be non-empty 2-D arrays, got shape {a.shape}")
    finite = np.isfinite(a)
    grey = None
    if finite.any():
        lo, hi = np.percentile(a[finite], [lo_pct, hi_pct])
        grey = (float(lo), float(hi))
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    else:
        scaled = np.zeros_like(a)
    u8 = (np.clip(np.nan_to_num(scaled, nan=0.0), 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="PNG")
    return buf.getvalue(), grey


def to_png(image: Any, lo_pct: float = GREY_PERCENTILES[0], hi_pct: float = GREY_PERCENTILES[1]) -> bytes:
    """An 8-bit grey PNG of a 2-D array, contrast stretched between two percentiles (NaN as black)."""
    return encode_png(image, lo_pct, hi_pct)[0]


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN and inf as None, numpy scalars and arrays as Python values, unknown objects as text."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, (np.integer, int, bool, str)) or o is None:
        return o.item() if isinstance(o, np.generic) else o
    return str(o)


class LivePage:
    """The live page server.

    Parameters
    ----------
    host : str
        Address to bind (default loopback: the page is local unless asked otherwise).
    port : int
        TCP port; 0 picks a free one (see :attr:`url`).
    title : str
        Page title (e.g. the scan folder).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, title: str = "xnh-stream") -> None:
        self.title = title
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"status": "waiting for frames"}
        self._images: dict[str, tuple[int, bytes]] = {}
        self._info: dict[str, dict[str, Any]] = {}  # per image: grey range, shape, and what the caller said
        self._version = 0
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page._html())
                elif path == "/state.json":
                    self._send(200, "application/json", page._state_json())
                elif path.startswith("/img/") and path.endswith(".png"):
                    item = page._images.get(path[5:-4])
                    if item is None:
                        self._send(404, "text/plain", b"no such image yet")
                    else:
                        self._send(200, "image/png", item[1])
                else:
                    self._send(404, "text/plain", b"not found")

            def _refuse(self) -> None:
                self.send_response(405)
                self.send_header("Allow", "GET")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("live page: " + fmt, *args)

        try:
            self._server = ThreadingHTTPServer((host, int(port)), Handler)
        except OSError as exc:
            raise OSError(f"live page: cannot listen on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="live-page", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the page is served."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def publish(self, state: dict[str, Any] | None = None, images: dict[str, Any] | None = None,
                image_info: dict[str, dict[str, Any]] | None = None) -> None:
        """Replace the page's state and (some of) its images (2-D arrays, or PNG bytes).

        Parameters
        ----------
        state : dict, optional
            The page's figures (``/state.json``; NaN and inf become null).
        images : dict, optional
            ``{name: 2-D array or PNG bytes}``; an array is drawn between its 1st and 99th percentiles
            (:data:`GREY_PERCENTILES`), which the page shows as the image's grey range.
        image_info : dict, optional
            ``{name: {...}}`` shown beside each image: ``pixel_m`` (the scale bar), ``unit`` (of the grey
            levels), where a slice is cut (``axis``, ``index``, ``size``, ``position_m``;
            :func:`xnh_stream.live.views.slice_info`). Served in ``/state.json`` under ``image_info`` with
            ``grey`` (``[black, white]``, null for PNG bytes) and ``shape`` (``[rows, columns]``) added.
        """
        encoded: dict[str, tuple[bytes, dict[str, Any]]] = {}
        for name, img in (images or {}).items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"live page image name must be alphanumeric, got {name!r}")
            if isinstance(img, bytes):
                encoded[name] = (img, {"grey": None})
            else:
                png, grey = encode_png(img)
                encoded[name] = (png, {"grey": grey, "shape": list(np.shape(img)),
                                       "percentiles": list(GREY_PERCENTILES)})
        with self._lock:
            self._version += 1
            for name, (png, measured) in encoded.items():
                self._images[name] = (self._version, png)
                self._info[name] = {**(image_info or {}).get(name, {}), **measured}
            for name, info in (image_info or {}).items():
                if name not in encoded and name in self._info:  # new words for an image already shown
                    self._info[name] = {**self._info[name], **info}
            if state is not None:
                self._state = _clean(state)

    def _state_json(self) -> bytes:
        with self._lock:
            body = {"title": self.title, "version": self._version, "time_s": time.time(), **self._state,
                    "images": {n: f"/img/{n}.png?v={v}" for n, (v, _) in self._images.items()},
                    "image_info": _clean(self._info)}
        return json.dumps(body, allow_nan=False).encode()

    def _html(self) -> bytes:
        return PAGE.replace("{{TITLE}}", self.title.replace("<", "&lt;")).encode()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
