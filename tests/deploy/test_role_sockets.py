"""Roles for local callers: the socket an account can open decides what it may do.

Real processes under other uids (a forked child that drops to the uid and to numeric supplementary
groups, so no /etc/group is edited): an account outside the groups gets ``status`` and nothing
else; a member of the control group may tap and begin an authentication but not grant points; a
member of the operator group may, and is audited. Anonymous TCP has the subscribe role. Needs root (to
switch uids; CI runs as root). Cost: about 3 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import request
from readerd.bus.roles import SOCKETS_ENV, control_endpoint
from readerd.config import PluginsConfig
from readerd.testing import RunningDaemon
from tests.support.daemon import running_daemon, sim_config

NOBODY = 65534
OPERATORS, CONTROLLERS = 64_801, 64_802  # gids no account has: only extra_groups grants them

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (CI runs as root)")

COMMANDS: dict[str, dict[str, Any]] = {
    "status": {},
    "tap": {"card": "alice", "reader": "Sim 00"},
    "auth.begin": {"reader": "Sim 00", "purpose": "library"},
    "points.grant": {"member_id": "m1", "points": 99999, "reason": "red team"},
    "points.redeem": {"member_id": "m1", "points": 10000},
    "mykey.relink": {"member_id": "m1", "reason": "red team"},
    "checkin.define_event": {"event_id": "e1", "name": "x"},
}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    sockets = Path(tempfile.mkdtemp(prefix="readerd-roles-"))
    sockets.chmod(0o755)  # the accounts must reach the sockets; each socket carries its own mode
    state = tmp_path / "state"
    config = sim_config(state, plugins=PluginsConfig(autoload=False, builtins=("points", "checkin")))
    bus = replace(
        config.bus, sockets_dir=str(sockets), operator_group=str(OPERATORS), control_group=str(CONTROLLERS)
    )
    with running_daemon(replace(config, bus=bus)) as running:
        yield running


def _as(uid: int, groups: list[int], sockets: Path) -> dict[str, Any]:
    """Every command of COMMANDS, sent by a process of ``uid`` with ``groups``, which finds its socket as
    readerctl does (the highest one it may open).

    A forked child that drops to that uid: the interpreter lives under /root here, which another account
    may not read, so a fresh ``python`` could not even start as it. The child uses a ZeroMQ context of
    its own (pyzmq makes one after a fork) and reports over a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        outcome: dict[str, Any]
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(uid)
            os.setuid(uid)
            os.environ[SOCKETS_ENV] = str(sockets)
            endpoint = control_endpoint(None, curve=False, configured="tcp://127.0.0.1:1")
            codes = {}
            for cmd, args in COMMANDS.items():
                reply = request(endpoint, cmd, args, timeout_ms=10_000)
                codes[cmd] = "ok" if reply["ok"] else reply["error"]["code"]
            outcome = {"uid": os.getuid(), "endpoint": endpoint, "codes": codes}
        except BaseException as e:  # reported to the parent, never raised in a forked pytest
            outcome = {"error": repr(e)}
        try:
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    assert "error" not in result, result
    assert result["uid"] == uid
    return result


def _sockets(daemon: RunningDaemon) -> Path:
    assert daemon.daemon.bus is not None
    assert daemon.daemon.bus.role_sockets is not None
    return daemon.daemon.bus.role_sockets.directory


def test_an_account_outside_the_groups_may_only_look(daemon: RunningDaemon) -> None:
    sockets = _sockets(daemon)
    assert (sockets / "operator.sock").stat().st_mode & 0o777 == 0o660
    assert (sockets / "operator.sock").stat().st_gid == OPERATORS
    assert (sockets / "control.sock").stat().st_gid == CONTROLLERS
    assert (sockets / "status.sock").stat().st_mode & 0o777 == 0o666
    seen = _as(NOBODY, [], sockets)
    assert str(seen["endpoint"]).endswith("status.sock")
    codes = seen["codes"]
    assert isinstance(codes, dict)
    assert codes["status"] == "ok"
    for cmd in ("tap", "auth.begin", "points.grant", "points.redeem", "mykey.relink", "checkin.define_event"):
        assert codes[cmd] == "forbidden", cmd


def test_a_control_member_may_tap_and_authenticate_but_not_grant(daemon: RunningDaemon) -> None:
    seen = _as(NOBODY, [CONTROLLERS], _sockets(daemon))
    assert str(seen["endpoint"]).endswith("control.sock")
    codes = seen["codes"]
    assert isinstance(codes, dict)
    assert codes["tap"] == "ok"
    assert codes["auth.begin"] not in ("forbidden",), (
        codes
    )  # allowed (it may still refuse for its own reasons)
    for cmd in ("points.grant", "mykey.relink", "checkin.define_event"):
        assert codes[cmd] == "forbidden", cmd


def test_an_operator_member_may_grant_and_is_audited(daemon: RunningDaemon) -> None:
    seen = _as(NOBODY, [OPERATORS], _sockets(daemon))
    assert str(seen["endpoint"]).endswith("operator.sock")
    codes = seen["codes"]
    assert isinstance(codes, dict)
    for cmd in ("points.grant", "mykey.relink", "checkin.define_event"):
        assert codes[cmd] != "forbidden", (cmd, codes)
    daemon.daemon._audit_writer.submit(lambda: None).result(5)  # what was queued is written
    audit = [
        json.loads(line)
        for line in (Path(daemon.daemon.config.state_dir) / "audit.log").read_text().splitlines()
    ]
    granted = [r for r in audit if r["action"] == "operator_command" and r["cmd"] == "points.grant"]
    assert granted, audit
    assert granted[-1]["caller"] == f"uid:{NOBODY}"
    assert granted[-1]["role"] == "operator"
    assert "member_id" not in granted[-1], "the arguments (personal data) are not audited"


def test_anonymous_tcp_gets_the_subscribe_role(daemon: RunningDaemon) -> None:
    assert daemon.daemon.bus is not None
    tcp = daemon.daemon.bus.control_endpoint
    assert request(tcp, "status")["ok"]
    for cmd, args in COMMANDS.items():
        if cmd != "status":
            reply = request(tcp, cmd, args)
            assert reply["error"]["code"] == "forbidden", (cmd, reply)
            assert "role" in reply["error"]["message"]


def test_the_harness_removes_the_role_socket_directories_it_makes(tmp_path: Path) -> None:
    """``sim_config`` makes a short directory for the role sockets per configuration: the daemon that
    used it stopping removes it (a restart makes it again), the process exiting removes the rest. They
    were never removed: a test session left hundreds in the system's temporary directory."""
    config = sim_config(tmp_path / "state")
    sockets = Path(config.bus.sockets_dir)
    for _ in range(2):  # stopped, and started again with the same configuration
        with running_daemon(config) as running:
            assert request(running.control, "status")["ok"]
            assert sockets.is_dir()
        assert not sockets.exists()
    script = "from pathlib import Path; from readerd.testing import sim_config; "
    script += f"print(sim_config(Path({str(tmp_path / 'other')!r})).bus.sockets_dir)"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert made.stdout.strip().startswith(str(tmp_path))  # it did make one, there
    assert not Path(made.stdout.strip()).exists()  # and it went with the process
