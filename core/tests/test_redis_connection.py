"""The process's shared Redis client (core.redis_connection)."""

from core.health import _redis_probe
from core.redis_connection import get_redis


def test_shared_client_opens_new_connections_without_reading_package_metadata(package_metadata_reads):
    """Request threads open connections under load: each must not walk sys.path (holding the GIL)."""
    pool = get_redis().connection_pool
    connections = [pool.get_connection() for _ in range(3)]  # at least two of them new
    try:
        for connection in connections:
            connection.send_command("PING")
            assert connection.read_response() in (b"PONG", "PONG")
    finally:
        for connection in connections:
            pool.release(connection)
    assert package_metadata_reads == []


def test_health_probe_client_connects_without_reading_package_metadata(package_metadata_reads, settings):
    settings.REDIS_URL = settings.REDIS_URL + "?client_name=probe-test"  # a fresh probe for this URL
    assert _redis_probe().ping()
    assert package_metadata_reads == []
