"""The ``[store]`` table of the configuration file (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from readerd.config import StoreConfig, load_config
from readerd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "readerd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_store_table_is_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[store]\nlocal_path = "/var/lib/readerd/plugins.db"\n'
            'shared_url = "postgresql+psycopg://readerd:pw@db/readerd"\nbusy_timeout = 2\nretries = 3\n',
        )
    ).validate()
    assert config.store == StoreConfig(
        local_path="/var/lib/readerd/plugins.db",
        shared_url="postgresql+psycopg://readerd:pw@db/readerd",
        busy_timeout=2.0,
        retries=3,
    )


def test_defaults_without_a_store_table(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'kiosk = "k1"\n')).validate().store == StoreConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store]\nretrys = 3\n", "store: unknown key"),
        ('[store]\nretries = "3"\n', "store.retries: expected a number"),
        ("[store]\nretries = 101\n", "store.retries"),
        ('[store]\nshared_url = "sqlite:///x.db"\n', "store.shared_url"),
        ("[store]\nbusy_timeout = 0\n", "store.busy_timeout"),
        ("[store]\nretry_backoff = 1.0\nretry_backoff_max = 0.5\n", "store.retry_backoff"),
        ("[store]\npool_size = 0\n", "store.pool_size"),
    ],
)
def test_bad_store_settings_stop_the_start(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text)).validate()
