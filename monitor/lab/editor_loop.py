"""The topic editor's loop, simulated: how far a topic written from its definition gets once its admin reads the
editor's borderline items and clicks (`monitor eval editor`).

A new topic has no labels, and one written from its definition alone (a sentence, 6-8 examples, a few near
misses) scores far below the shipped topics (docs/topic-relevance.md). What an admin has instead is the topic
editor: as they type, it lists what the topic would have matched, each match with a **near miss** button (its
headline joins the counterexamples), and the closest misses, each with an **example** button (its headline joins
the examples). This module replays that loop with a reader who follows the labels:

* each round, the reader reads some of the listed matches (the newest first, as the editor lists them, or the
  weakest first) and the closest misses (the highest-scoring items below the threshold) among the *read* items
  (dated before the split day) not read before; a match labelled off topic becomes a
  counterexample, a miss labelled on topic an example (headlines, as the buttons add them); a headline already
  in the topic is read but not added, as the editor shows it "in the topic", and an item an earlier click of
  the round moved to the other list is read but not clicked;
* after each click the topic is compiled again (label-free threshold from its new examples, as the editor
  re-runs the backtest; a careful reader keeps the click only if its diff is all right, `click_helps`), and
  after each round it is measured on the *measured* items (from the split day): items the reader never saw.

The combiner is fitted on the configuration's OTHER topics (`leave_one_out_combiner`), as the "new topic, no
labels" protocol fits it, so no label of the simulated topic reaches the scorer except through the clicks. Each
item's own evidence is scored (no story-level evidence): the figures are comparable round to round and with the
topic's keyword query on the same items, not with `eval topics`' story-level figures.

Pure functions around one injected `encode` (texts -> unit vectors); no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.config import TopicConfig
from monitor.lab import topic_eval
from monitor.signal import match, relevance

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True, slots=True)
class Reader:
    """What the simulated admin reads each round among the read items not read before: `matches` of the listed
    matches (the newest first, as the editor lists them; with `weakest_first`, the lowest scores first: the
    hardest cases) and the `closest` misses (highest scores first, as the editor lists them)."""

    matches: int = 10
    closest: int = 10
    weakest_first: bool = False
    examples: bool = True  # clicks "example" on a miss that is on topic
    near_misses: bool = True  # clicks "near miss" on a match that is off topic
    careful: bool = False  # reads each click's diff (`click_helps`) and undoes a click with a wrong change in it


@dataclass(frozen=True, slots=True)
class Round:
    """The topic after `number` rounds of reading, measured on the measured items."""

    number: int
    read: int  # items read so far
    examples_added: int  # headlines added as examples so far
    counterexamples_added: int
    threshold: float
    scores: topic_eval.Scores
    diff_read: int = 0  # items a careful reader read in the diffs of their clicks so far

    def as_dict(self) -> dict[str, object]:
        return {"round": self.number, "read": self.read, "examples_added": self.examples_added,
                "counterexamples_added": self.counterexamples_added, "threshold": round(self.threshold, 4),
                "diff_read": self.diff_read, **self.scores.as_dict()}


def leave_one_out_combiner(pairs: Sequence[topic_eval.TopicPairs], topic_id: str, mask: np.ndarray,
                           names: Sequence[str], l2: float) -> relevance.Combiner:
    """The combiner fitted on every topic of `pairs` but `topic_id`, on the items in `mask` (the keyword veto
    applied, as every fit applies it)."""
    others = [p for p in pairs if p.topic.id != topic_id]
    if not others:
        raise topic_eval.EvalDataError(f"simulating {topic_id!r} needs at least one other labelled topic to fit "
                                       "the combiner on (a new topic has no labels of its own)")
    x = np.vstack([p.x[mask & p.allowed] for p in others])
    y = np.concatenate([p.gold[mask & p.allowed] for p in others])
    return relevance.fit(x, y, names, l2=l2)


def compile_with(topic: TopicConfig, encode: Encode, combiner: relevance.Combiner) -> match.CompiledTopic:
    """`topic` compiled with `combiner` (its label-free threshold included, unless the topic configures one)."""
    prototypes = encode([topic.description, *topic.examples])
    counters = encode(topic.counterexamples) if topic.counterexamples else np.zeros((0, prototypes.shape[1]),
                                                                                     dtype=prototypes.dtype)
    return match.compile_topic(topic, prototypes, counters, combiner=combiner)


def verdicts(t: match.CompiledTopic, texts: Sequence[str], vectors: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, allowed, matched) of each text on its own evidence: a text vetoed by an `exclude` keyword
    (or, in gate mode, missing a keyword group) is not allowed, so never matched, and the editor does not offer
    it as a miss either."""
    prob, _sc, ev = match.score_topic(t, texts, vectors)
    ok = match.allowed(t, ev)
    return prob, ok, ok & (prob >= t.threshold)


def choose_reads(prob: np.ndarray, matched: np.ndarray, readable: np.ndarray, times: np.ndarray,
                 reader: Reader) -> np.ndarray:
    """Indices the reader reads this round among `readable`: matches (newest first, or weakest first), then the
    closest misses."""
    idx = np.flatnonzero(readable & matched)
    key = prob[idx] if reader.weakest_first else -times[idx]
    listed = idx[np.argsort(key, kind="stable")][:reader.matches]
    idx = np.flatnonzero(readable & ~matched)
    closest = idx[np.argsort(-prob[idx], kind="stable")][:reader.closest]
    return np.concatenate([listed, closest]).astype(int)


def click_helps(before: np.ndarray, after: np.ndarray, gold: np.ndarray, window: np.ndarray) -> tuple[bool, int]:
    """What a careful admin reads in the editor's diff after a click (the items of the backtest `window` the click
    gained and lost, nothing else) and whether they keep it: (every change is right and there is one, items
    read). A change is right when it gains an on-topic item or loses an off-topic one. The strictest reader: a
    diff with one wrong change is undone, whatever else it fixes (a near miss that drops 500 off-topic matches
    and 200 on-topic ones "fixes" more than it breaks and still costs most of the topic's recall)."""
    gained, lost = window & after & ~before, window & before & ~after
    right = int((gained & (gold == 1)).sum() + (lost & (gold == 0)).sum())
    wrong = int((gained & (gold == 0)).sum() + (lost & (gold == 1)).sum())
    return right > 0 and wrong == 0, int(gained.sum() + lost.sum())


def simulate(topic: TopicConfig, titles: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
             times: np.ndarray, gold: np.ndarray, read_mask: np.ndarray, measure_mask: np.ndarray, encode: Encode,
             combiner: relevance.Combiner, rounds: int, reader: Reader = Reader()) -> list[Round]:
    """Rounds 0 (the topic as written) to `rounds` of the editor loop (module docstring) for one topic; `times`:
    each item's publication time (any increasing number), for the order in which matches are listed. With
    `reader.careful`, each click is kept only when the diff it causes over the items before the split (the
    editor's window) says so (`click_helps`: only the labels of the items in the diff are read)."""
    if rounds < 0:
        raise ValueError("rounds must be >= 0")
    gold = np.asarray(gold, dtype=int)
    measured_ids = np.flatnonzero(measure_mask)
    gold_set = {int(i) for i in measured_ids if gold[i] == 1}
    times = np.asarray(times, dtype=np.float64)
    read = np.zeros(len(titles), dtype=bool)
    current = topic
    added_ex = added_cx = diff_read = 0
    out: list[Round] = []
    t = compile_with(current, encode, combiner)
    prob, allowed, matched = verdicts(t, texts, vectors)
    for number in range(rounds + 1):
        predicted = {int(i) for i in measured_ids if matched[i]}
        out.append(Round(number, int(read.sum()), added_ex, added_cx, t.threshold,
                         topic_eval.scores(predicted, gold_set), diff_read))
        if number == rounds:
            break
        chosen = choose_reads(prob, matched, read_mask & allowed & ~read, times, reader)
        if not chosen.size:
            break  # nothing left to read: later rounds would repeat this one
        own = {s.strip() for s in (*current.examples, *current.counterexamples)}
        listed_as_match = matched[chosen].copy()  # the lists as the reader saw them at the start of the round
        for i, was_match in zip(chosen, listed_as_match, strict=True):
            read[i] = True
            title = titles[i].strip()
            if title in own or not title or matched[i] != was_match:
                continue  # already in the topic, or an earlier click moved it to the other list: not clicked
            if matched[i] and gold[i] == 0 and reader.near_misses:
                trial = current.model_copy(update={"counterexamples": [*current.counterexamples, title]})
            elif not matched[i] and gold[i] == 1 and reader.examples:
                trial = current.model_copy(update={"examples": [*current.examples, title]})
            else:
                continue
            own.add(title)
            t_trial = compile_with(trial, encode, combiner)
            p_trial, _allowed, m_trial = verdicts(t_trial, texts, vectors)
            if reader.careful:
                keep, n = click_helps(matched, m_trial, gold, read_mask)
                diff_read += n
                if not keep:
                    continue
            if trial.counterexamples != current.counterexamples:
                added_cx += 1
            else:
                added_ex += 1
            current, t, prob, matched = trial, t_trial, p_trial, m_trial
    return out


def macro(rounds_by_topic: Mapping[str, Sequence[Round]]) -> list[float]:
    """Macro-F1 per round over the topics (a topic that stopped early keeps its last round)."""
    n = max((len(r) for r in rounds_by_topic.values()), default=0)
    return [float(np.mean([rs[min(k, len(rs) - 1)].scores.f1 for rs in rounds_by_topic.values()]))
            for k in range(n)]
