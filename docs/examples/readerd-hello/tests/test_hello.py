"""The example plugin's tests: only the `readerd` fixture that readerd installs for pytest."""

from __future__ import annotations

from pathlib import Path

import pytest
import readerd_hello
import sqlalchemy as sa

from readerd.config import Config, PluginsConfig
from readerd.plugin import Refusal as CommandFailedError
from readerd.testing import ReaderdHarness, sim_config


@pytest.fixture
def readerd_config(tmp_path: Path) -> Config:
    return sim_config(tmp_path, plugins=PluginsConfig(sections={"hello": {"greeting": "こんにちは"}}))


def test_every_visit_is_greeted_and_counted(readerd: ReaderdHarness) -> None:
    identified = readerd.tap("alice", reader="Sim 00", hold=False)
    first = readerd.wait_for("plugin.hello.greeting")
    readerd.tap("alice", reader="Sim 01", hold=False)  # another reader: a new visit, not a repeat
    second = readerd.wait_for("plugin.hello.greeting")
    assert first["data"] == {"message": "こんにちは", "visits": 1}
    assert second["data"]["visits"] == 2
    assert first["reader"] == identified["reader"]
    assert readerd.command("hello.visits", pseudonym=identified["data"]["pseudonym"]) == {"visits": 2}


def test_a_card_held_again_is_not_a_new_visit(readerd: ReaderdHarness) -> None:
    identified = readerd.tap("bob")
    readerd.wait_for("plugin.hello.greeting")
    readerd.tap("bob")  # on the same reader within the repeat window: flagged repeat
    readerd.tap("carol")  # events reach the plugin in order: once carol is greeted, bob's repeat was seen
    readerd.wait_for("plugin.hello.greeting")
    assert readerd.command("hello.visits", pseudonym=identified["data"]["pseudonym"]) == {"visits": 1}


def test_the_command_checks_its_arguments(readerd: ReaderdHarness) -> None:
    with pytest.raises(CommandFailedError) as refused:
        readerd.command("hello.visits")
    assert refused.value.code == "bad_request"


def test_the_plugin_is_installed_not_imported_from_the_source_tree() -> None:
    assert "site-packages" in Path(readerd_hello.__file__).parts


def test_each_visit_is_stored_once_under_its_event_id(readerd: ReaderdHarness) -> None:
    identified = readerd.tap("dave")
    readerd.wait_for("plugin.hello.greeting")
    store = readerd.store("hello")
    visits = store.shared.table("visits")
    rows = store.shared.transaction(
        lambda conn: conn.execute(sa.select(visits.c.event_id, visits.c.pseudonym)).all(), readonly=True
    )
    assert [tuple(row) for row in rows] == [(identified["id"], identified["data"]["pseudonym"])]
    assert store.shared.version() == len(readerd_hello.MIGRATIONS)
