"""What a kiosk page's stream carries for the composed screen (no browser, no daemon): a tap's ``id``,
a result's ``cause`` and words, ``plugin.handled``, and its reader coming and going.

Cost: well under a second."""

from __future__ import annotations

from readerd.web.app import event_words, kiosk_view, reaches_screen


def test_a_tap_and_its_results_can_be_matched_on_the_page() -> None:
    tap = {
        "type": "card.identified",
        "reader": "R",
        "seq": 3,
        "id": "t1",
        "data": {"kind": "jpki", "pseudonym": "P"},
    }
    screen = {"level": "success", "ja": "受付しました 1/100", "en": "Checked in 1/100"}
    result = {
        "type": "plugin.checkin.result",
        "reader": "R",
        "seq": 4,
        "id": "r1",
        "cause": "t1",
        "data": {"status": "accepted", "screen": screen},
    }
    handled = {
        "type": "plugin.handled",
        "reader": "R",
        "seq": 5,
        "id": "h1",
        "cause": "t1",
        "data": {"plugins": ["checkin"], "results": [{"id": "r1"}], "settled": True},
    }
    assert kiosk_view(tap) == {
        "type": "card.identified",
        "reader": "R",
        "seq": 3,
        "id": "t1",
        "data": {"kind": "jpki"},
    }
    assert kiosk_view(result) == result
    assert kiosk_view(handled) == handled
    assert kiosk_view({"type": "reader.added", "reader": "R", "seq": 6, "data": {"backend": "sim"}}) == {
        "type": "reader.added",
        "reader": "R",
        "seq": 6,
        "data": {},
    }
    assert kiosk_view({"type": "reader.error", "reader": "R", "seq": 7, "data": {}}) is None


def test_a_lost_card_event_reaches_its_screen_or_every_screen() -> None:
    """``card.events_lost``: the daemon lost a card event (docs/design.md D14); the screen of its reader
    asks for another tap, and every screen does when the lost event had no reader."""
    mine = {"type": "card.events_lost", "reader": "R", "seq": 8, "id": "n1", "data": {"lost": 2}}
    nobodys = {**mine, "reader": None}
    assert reaches_screen(mine, "R")
    assert not reaches_screen(mine, "S")
    assert reaches_screen(nobodys, "R")
    assert reaches_screen(nobodys, "S")
    assert not reaches_screen({"type": "card.identified", "reader": None, "data": {}}, "R")
    assert kiosk_view(mine) == {"type": "card.events_lost", "reader": "R", "seq": 8, "id": "n1", "data": {}}
    words, level = event_words(mine)
    assert (level, "2 件失いました" in words) == ("bad", True)
