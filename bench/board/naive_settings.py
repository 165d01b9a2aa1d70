"""Settings of the board benchmark's server: BROS as deployed, plus the naive all-rows page.

Static files are collected into this folder's `.static/` (gitignored), so the benchmark always
serves the current `static/` with the production storage (hashed names, compressed) without
touching the shared `staticfiles/`.
"""

from bros.settings import *  # noqa: F403
from bros.settings import BASE_DIR, env

ROOT_URLCONF = "bench.board.naive_urls"
STATIC_ROOT = BASE_DIR / "bench" / "board" / ".static"

# `run.py --static-override DIR`: files in DIR (e.g. DIR/deliveries/board.js) win over static/, to
# measure a change to the page scripts without touching the tree.
if _override := env("BOARD_BENCH_STATIC_OVERRIDE", default=""):
    STATICFILES_DIRS = [_override, *STATICFILES_DIRS]  # noqa: F405
