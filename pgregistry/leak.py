"""Where a connection was checked out, kept cheaply for leak reports.

``traceback.format_stack()`` reads and formats every source line at once (tens of
microseconds per checkout); :func:`caller_stack` keeps file, line and function only, and
:func:`format_stack` looks the source up if the connection is ever reported as a leak.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Collection

__all__ = ["STACK_DEPTH", "Frame", "caller_stack", "format_stack"]

#: Frames kept of the code that checked a connection out.
STACK_DEPTH = 16

Frame = tuple[str, int, str]  # file, line, function


def caller_stack(skip: Collection[str], limit: int = STACK_DEPTH) -> list[Frame]:
    """The caller's stack outside the files ``skip`` (the pool's own), oldest first."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in skip:
        frame = frame.f_back  # type: ignore[assignment]
    frames: list[Frame] = []
    while frame is not None and len(frames) < limit:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()
    return frames


def format_stack(frames: list[Frame]) -> str:
    """Format a stack from :func:`caller_stack` like a traceback, source lines included."""
    return "".join(traceback.format_list([traceback.FrameSummary(*f) for f in frames]))
