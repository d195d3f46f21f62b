"""readerd's SIP2 client as the library tests make it: the institution ``chuo``, a fixed clock (2026-11-23
10:00 Japan time), a 3 s timeout, the test's own defaults (login, keep-alive...), each client closed at
the end. ``with sip2_clients(user="kiosk") as make:`` then ``make(port, encoding="cp932")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from plugins.library.ils import Sip2Ils

#: ``make(port, **options)``: a client of the ACS on ``127.0.0.1:port``, the options over the defaults.
Sip2ClientFactory = Callable[..., Sip2Ils]


@contextmanager
def sip2_clients(**defaults: object) -> Iterator[Sip2ClientFactory]:
    made: list[Sip2Ils] = []

    def make(port: int, **options: object) -> Sip2Ils:
        settings = {**defaults, **options}
        ils = Sip2Ils(
            "127.0.0.1",
            port,
            institution="chuo",
            clock=lambda: datetime(2026, 11, 23, 1, tzinfo=UTC),
            timeout=3.0,
            **settings,  # type: ignore[arg-type]
        )
        made.append(ils)
        return ils

    try:
        yield make
    finally:
        for ils in made:
            ils.close()
