"""Process exit codes (sysexits.h), shared by every readerd command and by the systemd unit.

``RestartPreventExitStatus=78`` in the unit stops systemd from restarting a daemon whose configuration
is wrong: restarting would only fail again.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class ExitCode(IntEnum):
    OK = 0
    USAGE = 64  # wrong command line
    UNAVAILABLE = 69  # a required service or dependency is missing
    SOFTWARE = 70  # internal error
    CONFIG = 78  # bad configuration, including a refused insecure bind
