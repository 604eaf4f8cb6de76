"""`retinanet serve`: a Detector behind an HTTP API and a web page.

    batcher.py  a bounded queue and one worker thread: waiting requests share forward passes
    app.py      the FastAPI app (POST /predict, GET /health, /model, /metrics, the page at /)
    page.html   the web page: drop an image, see the boxes and a table, filter by confidence
"""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
