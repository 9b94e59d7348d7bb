"""Helpers for the training tests: the CLI against a training test's settings, and its registry."""

from __future__ import annotations

from click.testing import CliRunner

from digitq.settings import Settings
from model.registry import Registry
from producer.cli import main

from .pipeline_helpers import last_json


def cli(settings: Settings, *args: str):
    """`digitq ARGS...` in-process against ``settings``' Redis and data dir."""
    return CliRunner().invoke(main, ["--redis-url", settings.redis_url, "--data-dir", str(settings.data_dir), *args],
                              catch_exceptions=False)


def train_json(settings: Settings, *args: str) -> dict:
    """`digitq train ARGS... --wait --json`: the outcome it printed (exit code 0, or 1 for a failed training)."""
    result = cli(settings, "train", *args, "--wait", "--timeout", "240", "--json")
    assert result.exit_code in (0, 1), result.output
    return last_json(result)


def registry(settings: Settings) -> Registry:
    """The model registry under ``settings``' data dir."""
    return Registry(settings.models_dir)
