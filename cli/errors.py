"""How a command reports a user's mistake: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
from dtrain.service.errors import DtrainError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``DtrainError`` into click's one-line ``Error: ...`` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DtrainError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("dtrain: interrupted", err=True)
            sys.exit(130)

    return wrapper
