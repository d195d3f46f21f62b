from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from readerd.cli.main import main as readerd_main
from readerd.config import Config, is_loopback_endpoint, load_config, with_overrides
from readerd.errors import ConfigError
from readerd.ops.keys import create_pseudonym_key, load_pseudonym_key
from tests.support.ports import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_defaults_are_loopback_and_no_backend() -> None:
    config = Config()
    assert config.backends == ()
    assert is_loopback_endpoint(config.bus.publish)
    assert is_loopback_endpoint(config.bus.control)


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:7410", True),
        ("tcp://127.8.0.1:7410", True),
        ("tcp://[::1]:7410", True),
        ("tcp://localhost:7410", True),
        ("ipc:///run/readerd/control.sock", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:7410", False),
        ("tcp://*:7410", False),
        ("tcp://192.168.1.10:7410", False),
        ("tcp://eth0:7410", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text(
        'kiosk = "lib-1"\nbackends = ["pcsc"]\n[bus]\nheartbeat_interval = 2\n[pcsc]\nreaders = ["SONY"]\n'
    )
    config = load_config(path)
    assert (config.kiosk, config.backends, config.bus.heartbeat_interval) == ("lib-1", ("pcsc",), 2.0)
    assert config.pcsc.readers == ("SONY",)
    merged = with_overrides(
        config, {"kiosk": "lib-2", "bus.publish": "tcp://127.0.0.1:9000", "state_dir": None}
    )
    assert (merged.kiosk, merged.bus.publish, merged.state_dir) == (
        "lib-2",
        "tcp://127.0.0.1:9000",
        config.state_dir,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kiosks = 'x'", "unknown key"),
        ("[pcsc]\nalow_virtual_readers = true", "pcsc: unknown key"),
        ("[bus]\nheartbeat_interval = 'fast'", "bus.heartbeat_interval: expected a number"),
        ("[bus]\nsend_hwm = 1.5", "bus.send_hwm: expected an integer"),
        ("[pcsc]\nallow_virtual_readers = 1", "expected true or false"),
        ("backends = 'pcsc'", "expected a list"),
        ("bus = 3", "expected a table"),
        ("kiosk = [", "readerd.toml"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_validation_refuses_lan_without_curve_and_sim_on_lan() -> None:
    lan = with_overrides(Config(), {"backends": ("pcsc",), "bus.publish": "tcp://0.0.0.0:7410"})
    with pytest.raises(ConfigError, match="not loopback"):
        lan.validate()
    insecure = with_overrides(lan, {"bus.insecure_lan": True})
    assert insecure.validate() is insecure
    with pytest.raises(ConfigError, match="sim backend only runs with loopback"):
        with_overrides(insecure, {"backends": ("sim",)}).validate()
    with pytest.raises(ConfigError, match="unknown backend"):
        with_overrides(Config(), {"backends": ("usb",)}).validate()


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """The config_loader fuzzer's first finding: bytes that are not UTF-8 gave a traceback and exit 1.
    Now ConfigError, and `readerd run` exits 78 naming the file. Cost: < 0.5 s."""
    bad = tmp_path / "readerd.toml"
    bad.write_bytes(b'kiosk = "lib-\xd5entral"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    assert readerd_main(["run", "--config", str(bad)]) == 78


def test_run_without_a_backend_exits_78(tmp_path: Path) -> None:
    assert readerd_main(["run", "--state-dir", str(tmp_path)]) == 78


def test_run_with_a_lan_endpoint_exits_78(tmp_path: Path) -> None:
    assert (
        readerd_main(["run", "--simulate", "--state-dir", str(tmp_path), "--publish", "tcp://0.0.0.0:7410"])
        == 78
    )


def test_run_with_a_bad_config_file_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("nonsense = true\n")
    assert readerd_main(["run", "--config", str(path)]) == 78


def test_pseudonym_key_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        load_pseudonym_key(tmp_path / "missing.key")
    short = tmp_path / "short.key"
    short.write_bytes(bytes(31))
    short.chmod(0o640)
    with pytest.raises(ConfigError, match="32 bytes"):
        load_pseudonym_key(short)
    public = tmp_path / "public.key"
    public.write_bytes(bytes(32))
    public.chmod(0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        load_pseudonym_key(public)
    made = create_pseudonym_key(tmp_path / "new.key")
    assert load_pseudonym_key(tmp_path / "new.key") == made
    with pytest.raises(FileExistsError):
        create_pseudonym_key(tmp_path / "new.key")


def _ctl(*args: str, timeout: float = 20, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "readerctl"), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def test_readme_flow_run_simulate_tap_tail(tmp_path: Path) -> None:
    """`readerd run --simulate`, then `readerctl tap` and `readerctl tail`, as separate processes."""
    publish, control = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    endpoints = ["--publish", publish, "--control", control]
    daemon = subprocess.Popen(
        [str(BIN / "readerd"), "run", "--simulate", "--heartbeat", "0.1", *endpoints],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _ctl("--control", control, "status").returncode != 0:
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, "the daemon never answered status"
        tail = subprocess.Popen(
            [
                str(BIN / "readerctl"),
                "--publish",
                publish,
                "--json",
                "tail",
                "--heartbeats",
                "--timeout",
                "30",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None
        # The first heartbeat tells that the subscription is live (ZeroMQ's slow joiner); then tap.
        while json.loads(tail.stdout.readline())["type"] != "heartbeat":
            pass
        # From the daemon's directory readerctl finds its control sockets, as the README says.
        assert _ctl("tap", "alice", cwd=tmp_path).returncode == 0
        assert _ctl("remove", cwd=tmp_path).returncode == 0
        events: list[dict[str, object]] = []
        while not events or events[-1]["type"] != "card.removed":
            line = tail.stdout.readline()
            assert line, "readerctl tail ended before card.removed"
            event = json.loads(line)
            if event["type"] != "heartbeat":
                events.append(event)
        tail.terminate()
        tail.wait(10)
        tail.stdout.close()
        readers = _ctl("--control", control, "readers")
    finally:
        daemon.send_signal(signal.SIGTERM)
        log, _ = daemon.communicate(timeout=15)
    # Installed plugins (e.g. the docs' example) may add plugin.* results between the card events.
    card_events = [e["type"] for e in events if str(e["type"]).startswith("card.")]
    assert card_events == ["card.presented", "card.identified", "card.removed"]
    assert "Simulated Reader 00" in readers.stdout
    assert daemon.returncode == 0, log
    assert (tmp_path / ".readerd" / "pseudonym.key").exists()
    assert oct((tmp_path / ".readerd" / "pseudonym.key").stat().st_mode & 0o777) == "0o600"
    assert "readerd stopped" in log


def test_readerctl_without_a_daemon_exits_69() -> None:
    result = _ctl("--control", f"tcp://127.0.0.1:{free_tcp_port()}", "status")
    assert result.returncode == 69
    assert "no answer" in result.stderr


def test_entry_points_have_help() -> None:
    for tool in ("readerd", "readerctl", "readerd-sim"):
        result = subprocess.run(
            [str(BIN / tool), "--help"], capture_output=True, text=True, check=False, env=os.environ
        )
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


FELICA_TOML = """
backends = ["nfc"]
[[felica.reads]]
name = "bathhouse"
service_code = "000B"
blocks = [0, 1]
system_code = "88B4"

[[felica.reads]]
name = "balance"
service_code = "008b"
blocks = [0]
"""


def test_felica_reads_are_an_array_of_tables_that_survives_overrides(tmp_path: Path) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text(FELICA_TOML)
    config = load_config(path).validate()
    bath, balance = config.felica.reads
    assert (bath.name, bath.service, bath.blocks, bath.system) == ("bathhouse", 0x000B, (0, 1), 0x88B4)
    assert (balance.service, balance.system) == (0x008B, None)
    merged = with_overrides(config, {"kiosk": "bath-1"}).validate()
    assert merged.felica == config.felica


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "x"\nservice_code = "0B"\nblocks = [0]', r"felica.reads\[0\].service_code"),
        ('name = "x"\nservice_code = "000B"\nblocks = []', r"felica.reads\[0\].blocks"),
        ('name = "x"\nservice_code = "000B"\nblocks = ["0"]', "expected a list of integers"),
        ('name = "x"\nservice_code = "000B"\nblocks = [true]', "expected a list of integers"),
        ('name = "x"\nservice_code = "000B"\nblocks = [70000]', r"felica.reads\[0\].blocks"),
        ('name = "a b"\nservice_code = "000B"\nblocks = [0]', r"felica.reads\[0\].name"),
        ('name = "x"\nservice_code = "000B"\nblocks = [0]\nsystem_code = "XYZW"', "system_code"),
        ('name = "x"\nservice_code = "000B"\nblocks = [0]\nsevrice = 1', "unknown key"),
    ],
)
def test_bad_felica_reads_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text(f"[[felica.reads]]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path).validate()


def test_felica_read_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "readerd.toml"
    table = '[[felica.reads]]\nname = "x"\nservice_code = "000B"\nblocks = [0]\n'
    path.write_text(table + table)
    with pytest.raises(ConfigError, match="unique"):
        load_config(path).validate()
