""""Already knew this" raises a story's bar for updates (monitor.signal.stories.raise_bar_if_known): from two
marks on an update needs two developments; below the bar it is a repeat, with the reason saying why."""

from __future__ import annotations

from monitor.signal.novelty import Assignment
from monitor.signal.stories import raise_bar_if_known


def update(what: str) -> Assignment:
    return Assignment("update", 0, 0.8, f"same story (score 0.80) with {what}", what)


def test_no_marks_or_one_mark_keep_every_update() -> None:
    a = update("24 hostages")
    assert raise_bar_if_known(a, 0) is a
    assert raise_bar_if_known(a, 1) is a


def test_two_marks_need_two_new_facts() -> None:
    one, two = update("24 hostages"), update("24 hostages; Rafah crossing")
    held = raise_bar_if_known(one, 2)
    assert held.decision == "repeat" and held.what_is_new is None
    assert "readers already knew it (2 marks)" in held.reason and "needs 2 new facts" in held.reason
    assert raise_bar_if_known(two, 2) is two
    assert raise_bar_if_known(two, 9) is two  # never more than novelty can name: a big turn still alerts


def test_new_stories_and_repeats_are_never_changed() -> None:
    new = Assignment("new_story", None, None, "first report", None)
    rep = Assignment("repeat", 0, 0.9, "same story, nothing new", None)
    assert raise_bar_if_known(new, 10) is new and raise_bar_if_known(rep, 10) is rep
