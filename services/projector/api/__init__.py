"""The monitoring API (FastAPI): the read model over HTTP, SSE and the dashboard page."""
