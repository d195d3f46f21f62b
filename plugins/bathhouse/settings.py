"""The bath-house plugin's configuration keys (``[plugins.bathhouse]``) and migration lists, as it
declares them to readerd (``readerd_config_keys``, ``readerd_schemas``)."""

from __future__ import annotations

from plugins.bathhouse.offline import LOCAL
from plugins.bathhouse.service import shared_v1
from readerd.plugin import ArgType, ConfigKey, Schema

KEYS = [
    ConfigKey("bath_house", ArgType.STRING, "", "this kiosk's bath house (empty: a registration counter)"),
    ConfigKey("min_age", ArgType.INTEGER, 65, "eligible from this age in law (JST business date)"),
    ConfigKey("monthly_cap", ArgType.INTEGER, 4, "subsidised visits per JST calendar month, all houses"),
    ConfigKey("reissue_fee", ArgType.INTEGER, 0, "yen recorded at a reissue unless the command says"),
    ConfigKey("sync_interval", ArgType.NUMBER, 10, "seconds between pushes of visits admitted offline"),
    ConfigKey("retry_after", ArgType.NUMBER, 30, "seconds a failed shared store is left alone at taps"),
]

SCHEMAS = [Schema("shared", [shared_v1]), Schema("local", LOCAL)]
