"""Logging setup: batched line writes flushed once per event-loop turn."""

from __future__ import annotations

import io
import threading

import trio

from tubeworker.observe.logs import LineBuffer


async def test_lines_of_one_loop_turn_are_written_together_before_io_wait() -> None:
    stream = io.StringIO()
    buffer = LineBuffer(stream)
    trio.lowlevel.add_instrument(buffer.flush_instrument())
    buffer.bind_to_this_thread(True)
    try:
        buffer.msg("one")
        buffer.msg("two")
        assert stream.getvalue() == ""  # not yet: same loop turn
        await trio.sleep(0.01)  # the loop waits for I/O: the instrument flushes first
        assert stream.getvalue() == "one\ntwo\n"
    finally:
        buffer.bind_to_this_thread(False)


async def test_lines_from_another_thread_are_written_at_once() -> None:
    stream = io.StringIO()
    buffer = LineBuffer(stream)
    buffer.bind_to_this_thread(True)
    try:
        thread = threading.Thread(target=buffer.msg, args=("from a thread",))
        thread.start()
        thread.join()
        assert stream.getvalue() == "from a thread\n"  # e.g. the stall detector's warning
    finally:
        buffer.bind_to_this_thread(False)


def test_unbound_buffer_writes_at_once_and_unbinding_flushes() -> None:
    stream = io.StringIO()
    buffer = LineBuffer(stream)
    buffer.msg("before the loop")
    assert stream.getvalue() == "before the loop\n"
    buffer.bind_to_this_thread(True)
    buffer.msg("pending")
    buffer.bind_to_this_thread(False)  # the daemon's exit path
    assert stream.getvalue() == "before the loop\npending\n"
