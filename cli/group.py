"""The error policy every dtrain group shares (Flask's cli.py): commands only raise."""

from __future__ import annotations

import sys
from typing import Any

import click

from dtrain.service.errors import DtrainError


class DtrainGroup(click.Group):
    """Every command's ``DtrainError`` becomes click's one-line ``Error: ...`` with exit 1, and
    Ctrl-C exits 130 without a traceback. The sub-groups (``data``, ``jobs``) use it too, so they
    keep the policy when invoked on their own (tests, embedding).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DtrainError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("dtrain: interrupted", err=True)
            sys.exit(130)
