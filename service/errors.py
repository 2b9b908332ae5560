"""The one exception type a user should see: the CLI prints its message on one line and exits 1."""


class DtrainError(Exception):
    """A problem the user can fix (bad input, bad option, unreachable cluster, ...).

    The message must name the problem and fit on one line; the CLI prints it as
    ``dtrain: error: <message>`` without a traceback.
    """
