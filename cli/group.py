"""The error policy every dtrain group shares (Flask's cli.py): commands only raise."""

from __future__ import annotations

import sys
from typing import Any

import click

from dtrain.service.errors import DtrainError
from dtrain.service.train import stopping


class DtrainGroup(click.Group):
    """Every command's ``DtrainError`` becomes click's one-line ``Error: ...`` with exit 1;
    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal, as a shell reports it), in one line
    without a traceback. The sub-groups (``data``, ``jobs``) use it too, so they keep the
    policy when invoked on their own (tests, embedding).
    """

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM (Kubernetes, systemd, Slurm, `ray job stop`) as Ctrl-C: finally blocks run,
        # nothing half-written stays, and the exit is one line, not a silent death.
        owner = stopping.install()
        try:
            return super().invoke(ctx)
        except DtrainError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt as e:
            click.echo(f"dtrain: interrupted ({stopping.signal_name(e)})", err=True)
            sys.exit(stopping.exit_code(e))
        finally:
            if owner:
                stopping.uninstall()
