"""The points plugin's tables (all in the shared store: points are money-like and never spent offline),
but for ``pending_earns`` in the kiosk's local store. Migrations are append-only: add a step, never edit a
released one (nor the column lists they call).

``ledger`` is append-only: a balance is the sum of an account's entries in a programme, nothing else. A
redemption appends a negative entry; an expiry appends the negative of what was left; a correction is a
new entry, never an update. ``accounts`` holds one row per (account, programme), created with the first
entry, and exists to be locked: a redemption locks it (``SELECT … FOR UPDATE``) before it sums, so two
kiosks redeeming from one account at the same instant are serialised on that row.

**The one permitted update: a withdrawal.** A member who withdraws (``member.withdrawn``) has a right to
be forgotten that the ledger's append-only rule cannot override, and the ward has a duty to keep its books
(points issued against points redeemed and expired) that deleting the entries would break. So the
withdrawal re-keys, in one transaction, every row keyed by the member's accounts (``accounts``,
``ledger``, ``tickets``; ``requests`` whose key or result names the account) to ``withdrawn:<random>``:
no amount, kind, date or shop changes, every sum by programme, shop, day or kind is the same before and
after, and only the link to the person is gone. The balance is frozen (no card or ID leads to it) and
expires with the programme like any other. The member's ``cards`` rows are deleted, and their earnings
waiting in ``pending_earns`` are written off with reason ``withdrawn`` and re-keyed the same way
(docs/privacy.md, "Withdrawal and retention, per built-in"). No other update of the ledger is allowed.
"""

from __future__ import annotations

import sqlalchemy as sa

from plugins.common import create_requests_table
from readerd.plugin import MigrationContext, PluginDatabase

NAME = 64


def _programme() -> list[sa.Column[object]]:
    return [
        sa.Column("programme_id", sa.String(NAME), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("last_earning_day", sa.String(10), nullable=False),
        sa.Column("last_ticket_day", sa.String(10), nullable=False),
        sa.Column("last_use_day", sa.String(10), nullable=False),
        sa.Column("ticket_valid_days", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.String(20), nullable=False),
    ]


def _shop() -> list[sa.Column[object]]:
    return [
        sa.Column("shop_id", sa.String(NAME), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("area", sa.String(NAME), nullable=False),
    ]


def _account() -> list[sa.Column[object]]:
    return [
        sa.Column("account", sa.String(NAME), primary_key=True),
        sa.Column("programme_id", sa.String(NAME), primary_key=True),
        sa.Column("opened_at", sa.String(20), nullable=False),
    ]


def _entry() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account", sa.String(NAME), nullable=False),
        sa.Column("programme_id", sa.String(NAME), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column(
            "kind", sa.String(16), nullable=False
        ),  # earn grant import redeem ticket ticket_refund expire
        sa.Column("shop_id", sa.String(NAME), nullable=True),
        sa.Column("reference", sa.String(128), nullable=True),  # check-in id, campaign, source, ticket code
        sa.Column("business_date", sa.String(10), nullable=False),  # JST date, for settlements
        sa.Column("created_at", sa.String(20), nullable=False),
    ]


def _ticket() -> list[sa.Column[object]]:
    return [
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("account", sa.String(NAME), nullable=False),
        sa.Column("programme_id", sa.String(NAME), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("expires_on", sa.String(10), nullable=False),
        sa.Column("issued_at", sa.String(20), nullable=False),
        sa.Column("used_at", sa.String(20), nullable=True),
        sa.Column("used_shop_id", sa.String(NAME), nullable=True),
        sa.Column("used_business_date", sa.String(10), nullable=True),
    ]


def _card() -> list[sa.Column[object]]:
    return [
        sa.Column("card", sa.String(NAME), primary_key=True),
        sa.Column("account", sa.String(NAME), nullable=False),
        sa.Column("registered_at", sa.String(20), nullable=False),
    ]


def shared_v1(m: MigrationContext) -> None:
    m.create_table("programmes", *_programme())
    m.create_table("shops", *_shop())
    m.create_table("accounts", *_account())
    m.create_table("ledger", *_entry())
    m.create_index("by_account", "ledger", "account", "programme_id")
    m.create_index("by_day", "ledger", "business_date", "kind")
    m.create_table("tickets", *_ticket())
    m.create_table("cards", *_card())
    create_requests_table(m)


def shared_v2(m: MigrationContext) -> None:
    """A programme may open for earning later than it is defined (NULL: open from its definition)."""
    m.add_column("programmes", sa.Column("first_earning_day", sa.String(10), nullable=True))


SHARED = [shared_v1, shared_v2]


def _pending() -> list[sa.Column[object]]:
    return [
        sa.Column("reference", sa.String(128), primary_key=True),  # the check-in id: one earning each
        sa.Column("account", sa.String(NAME), nullable=False),
        sa.Column("programme_id", sa.String(NAME), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(NAME), nullable=False),
        sa.Column("reader", sa.String(128), nullable=False),
        sa.Column("queued_at", sa.String(20), nullable=False),
    ]


def local_v1(m: MigrationContext) -> None:
    """The kiosk's own: earnings waiting for the shared store (never spending: that needs it online)."""
    m.create_table("pending_earns", *_pending())


def _pending_v2() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "checkin_id", sa.String(128), nullable=True
        ),  # the ledger's reference (NULL: ``reference``)
        sa.Column("reason", sa.String(32), nullable=True),  # why it waits, or why written off (NULL: store)
        sa.Column("written_off_at", sa.String(20), nullable=True),
    ]


def local_v2(m: MigrationContext) -> None:
    """Pending earnings say why they wait (store down, programme unknown or not open yet) and, once the
    programme's last earning day has passed, stay as written off with that reason. New rows are keyed
    ``<event>:<account>`` (one earning per event and person); rows from before keep the check-in id."""
    for column in _pending_v2():
        m.add_column("pending_earns", column)


def _withdrawal() -> list[sa.Column[object]]:
    return [
        sa.Column("person", sa.String(NAME), primary_key=True),
        sa.Column("anon", sa.String(NAME), nullable=False),
        sa.Column("queued_at", sa.String(20), nullable=False),
    ]


def local_v3(m: MigrationContext) -> None:
    """Withdrawals whose shared records wait for the shared store: the person key and the
    ``withdrawn:<random>`` key it becomes, kept only until the shared store has re-keyed them."""
    m.create_table("withdrawals", *_withdrawal())


LOCAL = [local_v1, local_v2, local_v3]


def withdrawals_table(db: PluginDatabase) -> sa.Table:
    return db.table("withdrawals", *_withdrawal())


def pending_table(db: PluginDatabase) -> sa.Table:
    return db.table("pending_earns", *_pending(), *_pending_v2())


class Tables:
    def __init__(self, db: PluginDatabase) -> None:
        self.programmes = db.table(
            "programmes", *_programme(), sa.Column("first_earning_day", sa.String(10), nullable=True)
        )
        self.shops = db.table("shops", *_shop())
        self.accounts = db.table("accounts", *_account())
        self.ledger = db.table("ledger", *_entry())
        self.tickets = db.table("tickets", *_ticket())
        self.cards = db.table("cards", *_card())
