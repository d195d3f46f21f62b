"""The built-in plugins (``plugins/``): name -> ``module`` or ``module:object``.

Loaded like third-party plugins, but only those a kiosk names in ``[plugins] builtins``: a plugin a
kiosk does not use must not receive its cards. A class is instantiated once per host, so a plugin's state
lives in its instance.
"""

from __future__ import annotations

BUILTIN: dict[str, str] = {
    "checkin": "plugins.checkin:CheckinPlugin",
    "points": "plugins.points:PointsPlugin",
    "bathhouse": "plugins.bathhouse:BathhousePlugin",
    "library": "plugins.library:LibraryPlugin",
}
