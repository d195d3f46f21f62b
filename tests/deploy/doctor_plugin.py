"""A plugin contributing doctor checks: one passes, one finds a problem, one is broken (it raises)."""

from __future__ import annotations

from readerd.plugin.api import CheckResult, CheckStatus, DoctorCheck
from readerd.plugin.hookspecs import hookimpl


def _printer() -> CheckResult:
    return CheckResult(CheckStatus.PROBLEM, "the ticket printer is out of paper", "load a paper roll")


def _ils() -> CheckResult:
    return CheckResult(CheckStatus.OK, "the library system answers")


def _broken() -> CheckResult:
    raise RuntimeError("the plugin's own bug")


@hookimpl
def readerd_doctor_checks() -> list[DoctorCheck]:
    return [DoctorCheck("printer", _printer), DoctorCheck("ils", _ils), DoctorCheck("broken", _broken)]
