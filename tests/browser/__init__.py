"""Browser tests: headless Chromium against a live ASGI server."""
