"""The daemon test helpers live in :mod:`readerd.testing` (plugin authors use them too); the hardware
configuration is for readerd's own tests only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from readerd import testing
from readerd.config import Config, IdentityConfig, PluginsConfig
from readerd.ops.keys import create_pseudonym_key
from readerd.testing import (
    Envelope,
    RunningDaemon,
    Subscriber,
    private_feed,
    running_daemon,
)

__all__ = [
    "Envelope",
    "RunningDaemon",
    "Subscriber",
    "hardware_config",
    "private_feed",
    "running_daemon",
    "sim_config",
]


def sim_config(state_dir: Path, **overrides: Any) -> Config:
    """readerd's own tests load no installed third-party plugin (the example plugin is installed in the
    test venv and tests itself); a test that wants plugins passes its own ``plugins=``."""
    overrides.setdefault("plugins", PluginsConfig(autoload=False))
    return testing.sim_config(state_dir, **overrides)


def hardware_config(state_dir: Path, backends: tuple[str, ...], **overrides: Any) -> Config:
    """A production-like configuration (no simulator backend): the pseudonym key is made in state_dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = state_dir / "pseudonym.key"
    if not key.exists():
        create_pseudonym_key(key)
    config = replace(sim_config(state_dir), backends=backends, identity=IdentityConfig(str(key)))
    return replace(config, **overrides)
