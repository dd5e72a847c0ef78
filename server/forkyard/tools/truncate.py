"""One rule for every tool result: bounded, and saying so when it was cut. A model that
gets 10 MB back from one `cat` loses its whole context (or the request fails), so no
tool result is ever longer than the configured `max_tool_output_chars`."""

from __future__ import annotations

OUTPUT_CUT_MARKER = "\n[... output truncated: {omitted} characters not shown ...]\n"


def truncate_output(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars`: its beginning and its end (where errors
    usually are), with a marker saying how much of the middle is missing."""
    if len(text) <= max_chars:
        return text
    longest_marker = len(OUTPUT_CUT_MARKER.format(omitted=f"{len(text):,}"))
    keep = max(max_chars - longest_marker, 0)
    marker = OUTPUT_CUT_MARKER.format(omitted=f"{len(text) - keep:,}")
    head = keep * 2 // 3
    tail = keep - head
    return text[:head] + marker + (text[-tail:] if tail else "")
