"""CURVE through the daemon and readerctl: keys generate/allow/list/revoke, readerctl with a client key,
and the configuration rule for LAN endpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.client import BusClient, CurveKeys
from readerd.cli.ctl import main as readerctl
from readerd.config import Config, with_overrides
from readerd.errors import ConfigError
from tests.support.daemon import running_daemon, sim_config


def keys_cmd(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert readerctl(["--json", "keys", *args]) == 0
    out = capsys.readouterr().out
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def test_readerctl_keys_generate_allow_list_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curve_dir = tmp_path / "curve"
    made = keys_cmd(capsys, "generate", "counter-3", "--dir", str(tmp_path / "client"))
    assert Path(str(made["secret"])).stat().st_mode & 0o777 == 0o600
    assert (
        readerctl(["keys", "generate", "counter-3", "--dir", str(tmp_path / "client")]) == 78
    )  # never overwrites
    capsys.readouterr()
    keys_cmd(
        capsys,
        "allow",
        "counter-3",
        "--key-file",
        str(made["public"]),
        "--role",
        "control",
        "--curve-dir",
        str(curve_dir),
    )
    screen = keys_cmd(capsys, "generate", "screen", "--dir", str(tmp_path / "client"))
    # ``--key=KEY``: a Z85 key may start with "-", which ``--key KEY`` would take for an option.
    keys_cmd(capsys, "allow", "screen", f"--key={screen['public_key']}", "--curve-dir", str(curve_dir))
    assert (
        readerctl(["keys", "allow", "again", f"--key={screen['public_key']}", "--curve-dir", str(curve_dir)])
        == 78
    )
    dashed = "-" + str(screen["public_key"])[1:]  # a key that starts with "-", as one in 85 does
    keys_cmd(capsys, "allow", "dashed", f"--key={dashed}", "--curve-dir", str(curve_dir))
    keys_cmd(capsys, "revoke", "dashed", "--curve-dir", str(curve_dir))
    listed = keys_cmd(capsys, "list", "--curve-dir", str(curve_dir))
    assert listed["server_key"] is None  # the daemon makes it on its first start with bus.curve
    assert listed["clients"] == [
        {"name": "counter-3", "role": "control", "public_key": made["public_key"]},
        {"name": "screen", "role": "subscribe", "public_key": screen["public_key"]},
    ]
    keys_cmd(capsys, "revoke", "screen", "--curve-dir", str(curve_dir))
    clients: Any = keys_cmd(capsys, "list", "--curve-dir", str(curve_dir))["clients"]
    assert [c["name"] for c in clients] == ["counter-3"]
    assert readerctl(["keys", "revoke", "screen", "--curve-dir", str(curve_dir)]) == 78
    assert readerctl(["keys", "allow", "x", "--key", "too-short", "--curve-dir", str(curve_dir)]) == 78


def test_daemon_with_curve_serves_allowed_keys_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curve_dir = tmp_path / "curve"
    config = sim_config(tmp_path / "state")
    config = replace(config, bus=replace(config.bus, curve=True, curve_dir=str(curve_dir)))
    client = keys_cmd(capsys, "generate", "kiosk-ui", "--dir", str(tmp_path / "client"))
    keys_cmd(
        capsys,
        "allow",
        "kiosk-ui",
        "--key-file",
        str(client["public"]),
        "--role",
        "control",
        "--curve-dir",
        str(curve_dir),
    )
    with running_daemon(config) as d:
        assert d.daemon.bus is not None
        tcp = d.daemon.bus.control_endpoint  # CURVE: keys on TCP (d.control is the local operator socket)
        server_key = curve_dir / "server.key"
        assert (curve_dir / "server.key_secret").stat().st_mode & 0o777 == 0o600
        curve = CurveKeys.from_files(server_key, Path(str(client["secret"])))
        with BusClient(d.publish, tcp, since=0, curve=curve) as events:
            ctl = [
                "--control",
                tcp,
                "--client-key",
                str(client["secret"]),
                "--server-key",
                str(server_key),
            ]
            assert readerctl([*ctl, "tap", "alice"]) == 0
            types = [events.next(timeout=10)["type"] for _ in range(4)]
        assert readerctl([*ctl, "--json", "status"]) == 0
        status = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert readerctl(["--control", tcp, "status"]) == 69  # no key: no answer
    assert types == ["reader.added", "reader.added", "card.presented", "card.identified"]
    assert status["curve"] is True


def test_lan_endpoints_need_curve_or_insecure_lan() -> None:
    lan = with_overrides(Config(), {"backends": ("pcsc",), "bus.publish": "tcp://0.0.0.0:7410"})
    with pytest.raises(ConfigError, match=r"bus\.curve = true"):
        lan.validate()
    assert with_overrides(lan, {"bus.curve": True}).validate().bus.curve is True
    with pytest.raises(ConfigError, match="allowlist_poll"):
        with_overrides(lan, {"bus.curve": True, "bus.allowlist_poll": 0.0}).validate()
