"""The uvicorn protocol class frames an event once: its bytes must be exactly uvicorn's own."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from realtime.uvicorn_protocol import text_frame

# Payload lengths around the frame header's three size encodings (7-bit, 16-bit, 64-bit).
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def uvicorn_bytes(text: str) -> bytes:
    """What uvicorn's sans-I/O protocol writes for `websocket.send` with this text, no extensions."""
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.send_text(text.encode())
    return b"".join(server.data_to_send())


@pytest.mark.parametrize("length", LENGTHS)
def test_a_text_frame_is_byte_for_byte_what_uvicorn_would_write(length):
    text = ("배달 " * length)[:length]  # multi-byte UTF-8: the header counts bytes, not characters
    assert text_frame(text) == uvicorn_bytes(text)


@pytest.mark.parametrize("length", LENGTHS)
def test_a_client_reads_the_frame_back_as_the_same_text(length):
    text = ('{"type":"event"}' * (length // 16 + 1))[:length]
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)  # past the handshake
    client.receive_data(text_frame(text))
    (frame,) = client.events_received()
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data.decode() == text


def test_one_event_is_framed_once_for_all_its_sockets():
    event = '{"type":"event","stream":"deliveries:gangnam","seq":7}'
    first = text_frame(event)
    assert text_frame(event) is first  # the hub hands every socket the same str: no second framing
    other = text_frame('{"type":"event","stream":"deliveries:gangnam","seq":8}')
    assert other != first
    assert text_frame("".join(["{", event[1:]])) == first  # an equal text built anew: same bytes
