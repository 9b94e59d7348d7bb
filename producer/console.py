"""What every ``digitq`` command shares: one-line errors, ``--json`` output, settings from options."""

from __future__ import annotations

import json
import math
import time

import click

from digitq.errors import DigitqError
from digitq.settings import Settings


class Group(click.Group):
    """Prints :class:`DigitqError` as one line of advice instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DigitqError as e:
            click.secho(f"Error: {e}", err=True, fg="red")
            ctx.exit(e.exit_code)


class Probability(click.FloatRange):
    """A number from 0 to 1; ``nan`` (which every comparison lets through, and then matches nothing) is refused."""

    name = "probability"

    def __init__(self) -> None:
        super().__init__(0, 1)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number from 0 to 1", param, ctx)
        return number


def emit_json(obj: dict | list) -> None:
    """One JSON document on one stdout line (the last one a command prints)."""
    click.echo(json.dumps(obj, ensure_ascii=True))


def settings_for(ctx: click.Context, **overrides: object) -> Settings:
    """The settings, with the root group's ``--redis-url`` / ``--data-dir`` and any command options."""
    return Settings.from_env(**{**(ctx.find_root().obj or {}), **overrides})


def when(timestamp: float | None) -> str:
    """A UTC time for tables, or ``-``."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"
