"""The one exception type a user should see: the CLI prints its message on one line and exits 1."""


class DtrainError(Exception):
    """A problem the user can fix (bad input, bad option, unreachable cluster, ...).

    The message must name the problem and fit on one line; the CLI prints it as
    ``dtrain: error: <message>`` without a traceback.
    """


def first_line(e: BaseException | str) -> str:
    """A message cut to its first line: Ray and gRPC errors (and job messages) carry whole
    tracebacks. An exception without a message is named by its type; empty text stays empty."""
    text = str(e).strip()
    if text:
        return text.splitlines()[0].strip()
    return "" if isinstance(e, str) else type(e).__name__
