"""The dispatcher-board benchmark: the virtual board vs a naive all-rows page (see docs/board-benchmark.md)."""
