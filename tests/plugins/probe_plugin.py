"""A plugin module for the discovery tests: loaded by module name like a built-in one, it answers a
control command and contributes a ``readerctl`` subcommand and a doctor check."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from readerd.plugin.api import (
    Arg,
    ArgType,
    CheckResult,
    CheckStatus,
    CommandSpec,
    CtlCommand,
    DoctorCheck,
    JsonObject,
    PluginContext,
)
from readerd.plugin.hookspecs import hookimpl

__version__ = "0.1"


def _echo(args: JsonObject) -> JsonObject:
    return {"echo": args["text"]}


@hookimpl
def readerd_commands(context: PluginContext) -> list[CommandSpec]:
    return [CommandSpec("probe.echo", _echo, {"text": Arg(ArgType.STRING)}, help="say it back")]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text")


def _run(args: argparse.Namespace, call: Callable[[str, JsonObject], JsonObject]) -> int:
    result: dict[str, Any] = call("probe.echo", {"text": args.text})
    print(f"probe says {result['echo']}")
    return 0


@hookimpl
def readerd_ctl_commands() -> list[CtlCommand]:
    return [CtlCommand("probe", "echo through the daemon", _configure, _run)]


@hookimpl
def readerd_doctor_checks() -> list[DoctorCheck]:
    return [DoctorCheck("probe", lambda: CheckResult(CheckStatus.OK, "the probe is fine"))]
