"""The check-in plugin's configuration keys (``[plugins.checkin]``) and migration lists, as it declares
them to readerd (``readerd_config_keys``, ``readerd_schemas``): a misspelt key stops the daemon (exit 78)
and ``readerctl help config`` lists these."""

from __future__ import annotations

from plugins.checkin.schema import LOCAL, SHARED
from readerd.plugin import ArgType, ConfigKey, Schema

KEYS = [
    ConfigKey("event", ArgType.STRING, None, "the event this kiosk admits to (unless `readers` names one)"),
    ConfigKey("readers", ArgType.OBJECT, {}, "reader name = event id, per reader (over `event`)"),
    ConfigKey("allow_unenrolled", ArgType.BOOLEAN, False, "admit My Number Cards not enrolled in MyKey"),
    ConfigKey("sync_interval", ArgType.NUMBER, 10, "seconds between pushes of offline check-ins"),
    ConfigKey("retry_after", ArgType.NUMBER, 30, "seconds a failed shared store is left alone at taps"),
]

SCHEMAS = [Schema("shared", SHARED), Schema("local", LOCAL)]
