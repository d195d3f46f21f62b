"""The steps both readers' tests share: each prompts the technician and checks the daemon's events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.support.daemon import Envelope, RunningDaemon, Subscriber

MY_NUMBER = "hold the My Number Card on the reader until the beep / マイナンバーカードをかざしてください"
FELICA = (
    "hold the FeliCa card (bath-house, check-in or transit) on the reader / FeliCaカードをかざしてください"
)
PULL = (
    "touch the My Number Card to the reader and pull it away AT ONCE, several times, until told to stop "
    "/ カードを一瞬だけかざしてすぐ離してください"
)


@dataclass
class Technician:
    """Says what to do on the terminal, through pytest's capture, and waits for the card's events."""

    say: Callable[[str], None]
    timeout: float

    def await_read(self, sub: Subscriber, what: str) -> Envelope:
        """Prompt ``what``, then the read's end (``card.identified`` or ``card.read_aborted``)."""
        self.say(what)
        events = sub.until(
            lambda e: e["type"] in ("card.identified", "card.read_aborted"), timeout=self.timeout
        )
        return events[-1]

    def await_removal(self, sub: Subscriber) -> None:
        self.say("take the card off the reader / カードを離してください")
        sub.until(lambda e: e["type"] == "card.removed", timeout=self.timeout)


def identify_my_number_card(sub: Subscriber, technician: Technician) -> Envelope:
    ended = technician.await_read(sub, MY_NUMBER)
    assert ended["type"] == "card.identified", ended
    data = ended["data"]
    assert data["kind"] == "jpki"
    assert len(data["pseudonym"]) > 6
    assert data["read_path"]
    assert data["apdus"] >= 1
    assert not [k for k in data if any(p in k for p in ("cert", "serial", "subject", "valid"))]
    technician.await_removal(sub)
    return ended


def read_felica_card(sub: Subscriber, technician: Technician) -> Envelope:
    ended = technician.await_read(sub, FELICA)
    assert ended["type"] == "card.identified", ended
    data = ended["data"]
    assert data["kind"] == "felica"
    assert isinstance(data["frames"], int)
    assert set(data["services"].values()) <= {"read", "absent", "unreadable"}
    assert not [k for k in data if "idm" in k.lower() or "block" in k]
    technician.await_removal(sub)
    return ended


def pull_mid_read(d: RunningDaemon, sub: Subscriber, technician: Technician) -> None:
    """Quick touches until one ends in ``card.read_aborted(removed)``; the reader then reads normally."""
    technician.say(PULL)
    aborted = sub.until(
        lambda e: e["type"] == "card.read_aborted" and e["data"]["reason"] == "removed",
        timeout=technician.timeout,
    )
    technician.say("stop: a pull mid-read was seen / 止めてください")
    for event in aborted:
        assert event["type"] != "card.read_aborted" or "pseudonym" not in event["data"]
    sub.until(lambda e: e["type"] == "card.removed", timeout=technician.timeout)
    assert all(r["card"] is None for r in d.request("readers")["result"]["readers"])
    identify_my_number_card(sub, technician)  # the reader goes on
