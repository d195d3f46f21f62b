"""The points plugin's configuration keys (``[plugins.points]``) and migration lists, as it declares them
to readerd (``readerd_config_keys``, ``readerd_schemas``)."""

from __future__ import annotations

from plugins.points.schema import LOCAL, SHARED
from readerd.plugin import ArgType, ConfigKey, Schema

KEYS = [
    ConfigKey("earn_programme", ArgType.STRING, "", "the programme check-in points are credited to"),
    ConfigKey("retry_interval", ArgType.NUMBER, 10, "seconds between retries of waiting earnings"),
]

SCHEMAS = [Schema("shared", SHARED), Schema("local", LOCAL)]
