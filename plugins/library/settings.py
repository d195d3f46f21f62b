"""The library plugin's configuration keys (``[plugins.library]``) and migration lists, as it declares
them to readerd (``readerd_config_keys``, ``readerd_schemas``). The local ILS's loans are a schema of
their own (``loans``) in the shared store, beside the patron tables (the default schema)."""

from __future__ import annotations

from plugins.library.ils import LOCAL_ILS_MIGRATIONS, LOCAL_ILS_SCHEMA
from plugins.library.service import LOCAL_MIGRATIONS, SHARED_MIGRATIONS
from readerd.plugin import ArgType, ConfigKey, Schema

S, INT, N, B = ArgType.STRING, ArgType.INTEGER, ArgType.NUMBER, ArgType.BOOLEAN

KEYS = [
    ConfigKey("library_id", S, "library", "this kiosk's library (a patron of each library apart)"),
    ConfigKey("ils", S, "local", '"sip2" (the library system) or "local" (loans in readerd\'s store)'),
    ConfigKey("sip2_host", S, None, 'the library system\'s SIP2 server (needed with ils = "sip2")'),
    ConfigKey("sip2_port", INT, 6001, "the SIP2 server's port"),
    ConfigKey("institution", S, None, "SIP2 AO (default: library_id)"),
    ConfigKey("terminal_password", S, "", "SIP2 AC, if the ACS wants one"),
    ConfigKey("sip2_user", S, "", "SIP2 93 Login CN, sent first on each connection (empty: no login)"),
    ConfigKey("sip2_password", S, "", "SIP2 93 Login CO"),
    ConfigKey("sip2_location", S, "", "SIP2 93 Login CP and checkin AP (default AP: institution)"),
    ConfigKey("sip2_keepalive", N, 30, "seconds of silence before a 99 SC Status keeps the link (0: off)"),
    ConfigKey("sip2_error_detection", B, True, "SIP2 AY sequence and AZ checksum on every message"),
    ConfigKey("sip2_encoding", S, "utf-8", 'text on the SIP2 wire: "utf-8", or "cp932" (older systems)'),
    ConfigKey("loan_limit", INT, 10, 'ils = "local": loans per patron'),
    ConfigKey("loan_days", INT, 14, 'ils = "local": days a loan runs'),
    ConfigKey("renewals", INT, 2, 'ils = "local": renewals per loan'),
    ConfigKey("registration_years", INT, 1, "a registration runs this long, then needs a renewal by JPKI"),
    ConfigKey("auth_window", N, 120, "seconds a card.authenticated on a reader counts for register/renew"),
    ConfigKey("auto_renew_registration", B, True, "a JPKI authentication renews an expiring registration"),
]

SCHEMAS = [
    Schema("shared", SHARED_MIGRATIONS),
    Schema("local", LOCAL_MIGRATIONS),
    Schema("shared", LOCAL_ILS_MIGRATIONS, LOCAL_ILS_SCHEMA),
]
