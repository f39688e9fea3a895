"""Novelty: incremental story clustering and the alert decision (new_story / update / repeat / held). Pure: no
I/O, the clock (`now`, the window) and the parameters come in as arguments; the caller (monitor.signal.stories
for the database, monitor.lab.story_eval for labelled files) owns persistence.

Clustering (parameters chosen on BASIL, AllSides and the near-miss set of look-alike events, see
`StoryParams` and monitor.lab.story_eval):

* Every item carries its L2-normalised embedding and the *facts* read from its text: figures, capitalised
  names, quoted phrases, and from its headline the arguments of what it reports (counts, ordinals, places:
  monitor.signal.developments). The developments themselves (a release, a deal, an extension, talks and
  where, a new count...) are read from the headline when deciding (newsworthy.Headline), for the item and
  for the items the topic alerted on.
* An item is compared with each open story of its topic (open while its last item is less than `window_h`
  hours older). The score is average-link cosine over the story's member vectors, minus a time penalty
  growing with the gap, minus evidence against a join: the item and the story name people/places and
  share none, or state counts/ordinals of the same thing that contradict each other ("second round" vs
  "third round"). The item joins the best story if the score clears `join_threshold`.

Alerting (`decide`): an alert is a development the topic's subscribers have not been told about, whatever
story it lands in. monitor.signal.newsworthy judges it: p(new) = p(the item reports a development on topic)
x (1 - p(it is the same development as an item the topic alerted on in the last `memory_h` hours)), two
small topic-agnostic models fitted on hand-read development labels, plus a rule that a realised event on
another day announced as a further one ("17 more hostages", "second exchange") is another development.
* An item joining an alerted story is an `update` when p(new) clears the model's threshold; "what's new"
  names the development in words ("release (17 more hostages, second exchange)"). Rephrasings, reactions
  and commentary are `repeat`s, and so is a new story that is not news.
* A new story that is news alerts at once on a clear match (`strong_margin` above the topic threshold);
  otherwise it is `held` until a second outlet reports it within `corroboration_h` hours (or a clear match
  that is news joins it), and then alerts as the new story.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from monitor.records import Decision, ItemRecord
from monitor.signal.developments import Development, arguments
from monitor.signal.newsworthy import SHIPPED_ALERT_MODEL, AlertModel, Headline, Told

# --- parameters -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoryParams:
    """Clustering and novelty parameters. Defaults are the ones chosen on the dev sets (how: see
    monitor.lab.story_eval): join_threshold and time_penalty by grid search maximising the lower of the BASIL and
    AllSides B-cubed F1, with time_penalty capped at 0.3 per 72 h (at most 0.1 per day of gap) so that real
    follow-ups a day or two later still join; name_conflict kept small (0.05 costs < 0.005 F1 on the dev
    sets, which share names across stories) because it is what separates same-type events in different
    places; link and gap_from chosen on the same grid (average link beat centroid and max link by 1-3
    points on AllSides)."""

    window_h: float = 72.0
    join_threshold: float = 0.5  # score an item needs to join an open story
    time_penalty: float = 0.3  # subtracted from the score per `time_scale_h` of gap (capped at 1 scale)
    time_scale_h: float = 72.0
    name_bonus: float = 0.0  # added per shared name (capped at two)
    name_conflict: float = 0.05  # subtracted when item and story both name things and share none
    gap_from: str = "mean"  # time gap measured to the nearest member, the members' mean time or the first item
    link: str = "average"  # "average" (mean over members), "max" or "centroid"
    max_members: int = 24  # member vectors kept per story (first item + most recent ones)
    duplicate_cosine: float = 0.97  # cosine at or above which an item is a near-identical copy
    args_conflict: float = 0.1  # subtracted when item and story state different counts/ordinals of one thing
    # --- alerting (see `decide`) ---
    material_updates: bool = True  # an update needs a development (False: any unseen figure/name/quote)
    corroboration: bool = True  # a new story on weak evidence waits for a second outlet
    corroboration_h: float = 6.0  # how long a held story waits for a second outlet
    strong_margin: float = 0.05  # match score above the topic threshold that needs no corroboration
    # how long the topic remembers what it alerted (closed stories included): a development told within this
    # many hours is not news again, whichever story it turns up in
    memory_h: float = 168.0
    # is an item a development the topic's subscribers were not told? (monitor.signal.newsworthy)
    alert_model: AlertModel = SHIPPED_ALERT_MODEL


# The reference point: single pass in date order, one cosine threshold against story centroids, no window,
# no time or name terms (the "about 0.90 on BASIL, 0.71 on AllSides").
BASELINE = StoryParams(
    window_h=1e9, join_threshold=0.7, time_penalty=0.0, name_bonus=0.0, name_conflict=0.0, link="centroid",
    args_conflict=0.0, material_updates=False, corroboration=False,
)


# --- facts ------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "dozen": 12,
}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000, "trillion": 10**12,
           "k": 1_000, "m": 1_000_000, "bn": 1_000_000_000}
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "yesterday", "tomorrow")
# Capitalised words that are not names (function words, headline verbs, time words, news jargon).
_NOT_NAMES = frozenset(
    ["a", "an", "the", "and", "or", "but", "nor", "of", "in", "on", "at", "to", "for", "from", "by", "with", "without", "about", "after", "before", "as", "over", "under", "into", "onto", "up", "down", "out", "off", "than", "then", "this", "that", "these", "those", "there", "here", "he", "she", "it", "they", "we", "you", "i", "his", "her", "its", "their", "our", "your", "my", "me", "him", "them", "us", "who", "whom", "whose", "what", "which", "when", "where", "why", "how", "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "not", "no", "yes", "new", "more", "most", "less", "many", "much", "some", "any", "all", "each", "every", "other", "another", "such", "only", "just", "also", "even", "still", "again", "live", "watch", "video", "photos", "opinion", "analysis", "exclusive", "breaking", "update", "updates", "latest", "explainer", "report", "reports", "news", "says", "said", "say", "mr", "mrs", "ms", "dr", "sir", "st", "via", "per", "vs", "amid", "despite", "while", "if", "so", "week", "weekend", "day", "days", "month", "year", "years", "morning", "night", "evening", "afternoon"] + [
        "developing", "briefing", "newsletter", "podcast", "pm", "et", "gmt", "bst", "est", "edt", "utc", "read",
        "full", "article", "first", "thing", "ceo", "fm", "tv", "now", "papers", "lines", "roundup"]
) | set(_MONTHS) | set(_DAYS)
# Names of news organisations: an outlet naming itself or its wire agency is not a new fact.
_OUTLETS = frozenset(
    ["reuters", "ap", "afp", "bbc", "cnn", "nbc", "abc", "cbs", "npr", "fox", "nyt", "times", "guardian", "post", "journal", "bloomberg", "sky", "aljazeera", "jazeera", "al", "associated", "press", "agence", "france-presse", "presse", "upi", "dpa", "xinhua", "tass"]
)

_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d[\d,]*(?:\.\d+)?")
_SENT_END = re.compile(r"[.!?:;]\s*$|^\s*$")
_QUOTE = re.compile(r"(?:^|(?<=[\s(\[:,—-]))[\"“‘']([^\"“”‘’]{6,100}?)[\"”’'](?=[\s.,;:!?)\]—-]|$)")
_DURATION = re.compile(r"^-?(?:second|minute|hour|day|week|month|year|decade|time)s?$|^-?year-old", re.I)
_NUM = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s*(%|percent|per cent))?"
                  r"(?:\s+(thousand|million|billion|trillion|bn|k|m)\b)?", re.I)
_NUMWORD = re.compile(r"\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")(?:[- ](one|two|three|"
                      r"four|five|six|seven|eight|nine))?(s)?\b(?:\s+(thousand|million|billion|hundred))?", re.I)
_TIME = re.compile(r"\b\d{1,2}[:.]\d{2}\b|\b\d{1,2}\s*(?:am|pm|a\.m\.|p\.m\.)", re.I)
_DATE = re.compile(
    r"\b(?:" + "|".join(_MONTHS) + r")\.?\s+\d{1,2}(?:st|nd|rd|th)?\b|\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:"
    + "|".join(_MONTHS) + r")\b|\b(?:19|20)\d{2}\b|\b\d{1,2}(?:st|nd|rd|th)\b", re.I)


@dataclass(frozen=True, slots=True)
class Facts:
    """What an item states, normalised so that rephrasings compare equal."""

    numbers: frozenset[str] = frozenset()  # normalised values, e.g. "24", "1200000", "12%"
    names: frozenset[str] = frozenset()  # lower-case name tokens, e.g. "khan", "younis"
    quotes: frozenset[str] = frozenset()  # lower-case quoted phrases
    words: frozenset[str] = frozenset()  # every lower-case word and number value: what "appears" in text
    number_phrases: tuple[tuple[str, str], ...] = ()  # (value, phrase as written with its noun)
    name_phrases: tuple[tuple[str, str], ...] = ()  # (first token, phrase as written)
    title_quotes: frozenset[str] = frozenset()  # quoted phrases of the headline
    args: frozenset[str] = frozenset()  # the headline's counted figures, ordinals, places ("count:17:hostage")


def _norm_number(raw: str, scale: str | None, pct: str | None) -> str:
    v = float(raw.replace(",", ""))
    if scale:
        v *= _SCALES[scale.lower()]
    s = f"{v:.10g}"
    return s + "%" if pct else s


def _strip_dates(text: str) -> str:
    return _TIME.sub(" ", _DATE.sub(" ", text))


def _numbers(text: str) -> list[tuple[str, int, int]]:
    """(value, start, end) for figures in `text` (dates, times and years already removed)."""
    out = []
    for m in _NUM.finditer(text):
        out.append((_norm_number(m.group(1), m.group(3), m.group(2)), m.start(), m.end()))
    for m in _NUMWORD.finditer(text):
        w = m.group(1).lower()
        if m.group(3):
            continue  # "dozens", "hundreds", "tens of thousands": vague, not a figure
        if w == "one" and not m.group(4):
            continue  # "one" is mostly a pronoun ("one of the..."), not a figure
        v = _NUMBER_WORDS[w] + (_NUMBER_WORDS[m.group(2).lower()] if m.group(2) else 0)
        if m.group(4):
            v *= {"hundred": 100, **_SCALES}[m.group(4).lower()]
        out.append((f"{v:.10g}", m.start(), m.end()))
    return out


def _title_case(text: str) -> bool:
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'’\-]*", text) if len(w) > 3]
    return len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.7 * len(words)


def _name_candidates(text: str, trust_initial: bool) -> list[tuple[str, str]]:
    """(token, phrase) for capitalised words that are probably names. Sentence-initial words and words of a
    Title-Case headline are ambiguous ("Officials", "Rips") and kept only when they are acronyms."""
    out: list[tuple[str, str]] = []
    tokens = list(re.finditer(r"[A-Za-z][A-Za-z'’\-\.]*[A-Za-z]|[A-Z]", text))
    for i, m in enumerate(tokens):
        w = m.group(0).rstrip(".")
        if not w or not w[0].isupper():
            continue
        low = w.lower().replace("’", "'")
        low = low[:-2] if low.endswith("'s") else low
        if re.search(r"['’](?:m|re|ve|ll|d|t)$", low):
            continue  # I'm, we're, don't: not names
        letters = [c for c in w if c.isalpha()]
        acronym = len(letters) >= 2 and all(c.isupper() for c in letters)
        if (low in _NOT_NAMES and not (acronym and low in ("us", "un", "it"))) or low in _OUTLETS or len(low) < 2:
            continue
        initial = i == 0 or bool(_SENT_END.search(text[: m.start()][-3:])) or text[: m.start()].rstrip()[-1:] in "\"“‘'(—-"
        if not acronym and (initial or not trust_initial):
            continue
        # phrase: this word with its capitalised neighbours ("White House", not "House")
        if not trust_initial:
            out.append((low.replace(".", ""), w))
            continue
        k = i
        while k > 0 and tokens[k - 1].group(0)[0].isupper() and tokens[k].start() - tokens[k - 1].end() <= 1:
            k -= 1
        j = i
        while j + 1 < len(tokens) and tokens[j + 1].group(0)[0].isupper() and tokens[j + 1].start() - tokens[j].end() <= 1:
            j += 1
        phrase = text[tokens[k].start(): tokens[j].end()]
        out.append((low.replace(".", ""), phrase))
    return out


_PHRASE_STOP = frozenset(["in", "on", "at", "to", "for", "from", "by", "with", "as", "of", "and", "or", "but", "the", "a", "an", "amid", "after", "before", "into", "over", "under", "than", "that", "which", "who", "while", "during", "since", "is", "are", "was", "were", "be", "been", "has", "have", "had", "will", "would", "still"])


def _number_phrases(text: str) -> list[tuple[str, str]]:
    """(value, "figure + its noun") for the figures of `text` that count things. Durations ("24 hours",
    "two more days"), ages ("3-year-old", "girl, 9,") and bare numbers set off by punctuation or quotes are
    context, not news."""
    clean = _strip_dates(text)
    out = []
    for value, start, end in _numbers(clean):
        rest = clean[end:]
        tail = re.match(r"[\s-]*((?:[A-Za-z\-]+\s+){0,2}[A-Za-z\-]+)", rest)
        noun = tail.group(1).split() if tail else []
        if any(_DURATION.match(w) for w in noun[:3]):
            continue
        if not noun and re.match(r"\s*[,)\"“”‘’']", rest):
            continue
        cut = []
        for w in noun:
            if w.lower() in _PHRASE_STOP:
                break  # "35 killed in Israeli strikes" -> "35 killed"
            cut.append(w)
        out.append((value, " ".join([clean[start:end], *cut])))
    return out


def _quotes(text: str) -> set[str]:
    """Quoted phrases of at least two words. An apostrophe inside a word (Israel’s, won’t) is not a quote
    mark: quotes open after a space or the start and close before a space, punctuation or the end."""
    return {q.strip().lower() for q in _QUOTE.findall(text) if len(q.split()) >= 2}


def _words(text: str) -> set[str]:
    out = set()
    for w in _WORD.findall(text):
        low = w.lower().replace("’", "'")
        out.add(low)
        if low.endswith("'s"):
            out.add(low[:-2])
        if w[0].isdigit():
            out.add(_norm_number(w, None, None) if re.fullmatch(r"[\d,]+(?:\.\d+)?", w) else low)
    return out


def extract_facts(title: str, summary: str, outlet: str = "") -> Facts:
    """Facts of one item. Clustering uses the names of title + teaser; what can make an *update* is read
    from the headline only (the claim an outlet leads with), because teasers differ from outlet to outlet
    in incidental detail (photo credits, reporter names) that would make every re-report look new.
    `outlet` words are ignored (an outlet naming itself is not news)."""
    text = f"{title}. {summary}" if summary else title
    outlet_words = {w for w in re.split(r"[^a-z]+", outlet.lower()) if len(w) > 2}
    title_names = _name_candidates(title, trust_initial=not _title_case(title))
    names = title_names + (_name_candidates(summary, trust_initial=True) if summary else [])
    names = [(n, p) for n, p in names if n not in outlet_words]
    all_numbers = _number_phrases(text)
    words = _words(text) | {v for v, _p in all_numbers}
    return Facts(
        numbers=frozenset(v for v, _p in all_numbers),
        names=frozenset(n for n, _p in names),
        quotes=frozenset(_quotes(text)),
        words=frozenset(words),
        number_phrases=tuple(_number_phrases(title)),
        name_phrases=tuple((n, p) for n, p in title_names if n not in outlet_words),
        title_quotes=frozenset(_quotes(title)),
        args=arguments(title),
    )


# --- stories ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoveltyItem:
    """One matched item as novelty sees it. `margin` is the match score minus the topic's threshold (how
    clearly the item is on topic); None when unknown, which counts as clear."""

    item: ItemRecord
    topic_id: str
    vector: np.ndarray  # float32, L2-normalised
    facts: Facts
    margin: float | None = None


def novelty_item(item: ItemRecord, topic_id: str, vector: np.ndarray, margin: float | None = None) -> NoveltyItem:
    return NoveltyItem(item, topic_id, np.asarray(vector, dtype=np.float32),
                       extract_facts(item.title, item.summary, item.outlet), margin)


@dataclass(frozen=True, slots=True)
class OpenStory:
    """A story still accepting items: what clustering and novelty need to remember."""

    key: int  # story id (database) or a running number (evaluation)
    topic_id: str
    first_seen: datetime
    last_seen: datetime
    vectors: np.ndarray  # (k, dim) member vectors: first item + most recent ones
    times: tuple[float, ...]  # POSIX seconds of those members
    item_count: int
    sources: tuple[str, ...]
    hashes: frozenset[str]
    words: frozenset[str]  # every word/number value seen in the story's items
    names: frozenset[str]
    numbers: frozenset[str]
    quotes: frozenset[str]
    title: str = ""
    args: frozenset[str] = frozenset()  # counted figures, ordinals and places of its headlines
    alerted: bool = True  # subscribers have had an alert for this story
    waiting: bool = False  # held: news on a weak match, waiting for a second outlet (never alerted yet)
    alerted_vectors: np.ndarray | None = None  # (k, dim) vectors of the items that alerted (last few)
    alerted_times: tuple[float, ...] = ()  # POSIX seconds of those items
    alerted_titles: tuple[str, ...] = ()  # and their headlines

    @property
    def centroid(self) -> np.ndarray:
        c = self.vectors.mean(axis=0)
        n = float(np.linalg.norm(c))
        return (c / n if n else c).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where an item goes and what novelty decided."""

    decision: Decision
    story_index: int | None  # index into the open stories, None for a new story
    similarity: float | None  # the winning score (None for a new story with no candidate)
    reason: str
    what_is_new: str | None


def is_open(story: OpenStory, at: datetime, window_h: float) -> bool:
    return (at - story.last_seen).total_seconds() < window_h * 3600.0


def _args_conflict(mine: frozenset[str], theirs: frozenset[str]) -> bool:
    """Item and story state counts of the same thing with no value in common, or different ordinals
    ("second round" vs "third round"): evidence that they report two events of one kind."""
    for a in mine:
        if a.startswith("count:"):
            noun = a.rsplit(":", 1)[1]
            same_noun = {b for b in theirs if b.startswith("count:") and b.endswith(":" + noun)}
            if same_noun and not ({b for b in mine if b.endswith(":" + noun)} & same_noun):
                return True
    o1 = {a for a in mine if a.startswith("ord:") and a[4:].isdigit()}
    o2 = {a for a in theirs if a.startswith("ord:") and a[4:].isdigit()}
    return bool(o1 and o2 and not (o1 & o2))


def _score(story: OpenStory, x: NoveltyItem, params: StoryParams,
           background: frozenset[str] = frozenset()) -> tuple[float, float]:
    """(score, best member cosine)."""
    sims = story.vectors @ x.vector
    best = float(sims.max())
    if params.link == "max":
        s = best
    elif params.link == "centroid":
        s = float(story.centroid @ x.vector)
    else:
        s = float(sims.mean())
    t = x.item.published_at.timestamp()
    if params.gap_from == "first":
        gap_h = abs(t - story.first_seen.timestamp()) / 3600.0
    elif params.gap_from == "mean":
        gap_h = abs(t - sum(story.times) / len(story.times)) / 3600.0
    else:
        gap_h = min(abs(t - m) for m in story.times) / 3600.0
    s -= params.time_penalty * min(gap_h / params.time_scale_h, 1.0)
    mine, theirs = x.facts.names - background, story.names - background
    if mine and theirs:
        shared = len(mine & theirs)
        if shared:
            s += params.name_bonus * min(shared, 2)
        else:
            s -= params.name_conflict
    if params.args_conflict and _args_conflict(x.facts.args, story.args):
        s -= params.args_conflict
    return s, best


def _name_parts(name: str) -> list[str]:
    """"Israel-Hamas" -> ["israel", "hamas"]; "Putin’s" -> ["putin"]."""
    parts = []
    for w in re.split(r"[\s\-–—/]+", name.lower().replace("’", "'")):
        w = w.strip(".'")
        w = w[:-2] if w.endswith("'s") else w
        if w and w not in _NOT_NAMES:
            parts.append(w)
    return parts


def new_facts(story: OpenStory, facts: Facts, background: frozenset[str] = frozenset()) -> list[str]:
    """Material facts of an item's headline that the story has not seen, as short phrases (figures first).
    A figure is new when its value appears nowhere in the story (digits or words); a quote when at least two
    of its content words are new; a name when one of its parts is neither in the story nor in the topic's
    `background` (words common to several open stories of the topic: "Gaza" in a Gaza topic is context)."""
    out: list[str] = []
    seen: set[str] = set()
    for value, phrase in facts.number_phrases:
        if value in story.numbers or value in story.words or value in seen:
            continue
        seen.add(value)
        out.append(f"new figure: {phrase.strip()}")
    for q in sorted(facts.title_quotes):
        unseen = [w for w in _words(q) if len(w) > 3 and w not in story.words]
        if q not in story.quotes and len(unseen) >= 2:
            out.append(f"new quote: “{q}”")
    known = story.words | story.names | background
    phrases: list[str] = []
    for name, phrase in facts.name_phrases:
        parts = _name_parts(name)  # the name's own word; the phrase (with neighbours) is for display
        fresh = [w for w in parts if w not in known and w not in seen]
        if not fresh or any(phrase in p for p in phrases):
            continue
        seen.update(parts)
        phrases.append(phrase.strip())
    out += [f"new name: {p}" for p in phrases]
    return out


def topic_background(stories: Sequence[OpenStory], min_stories: int = 2) -> frozenset[str]:
    """Words that occur in at least `min_stories` open stories of a topic: the topic's known context."""
    if len(stories) < min_stories:
        return frozenset()
    counts: dict[str, int] = {}
    for st in stories:
        for w in st.names:
            counts[w] = counts.get(w, 0) + 1
    return frozenset(w for w, c in counts.items() if c >= min_stories)



def told_items(memory: Sequence[OpenStory], at: float, memory_h: float,
               parse: Callable[[str], Headline] = Headline.of) -> list[Told]:
    """What the topic's subscribers were told about items published within `memory_h` hours of `at` (POSIX
    seconds; after it too: an item from a slow feed can arrive after the alert on a later report of the same
    news): every alerted item kept by the stories of `memory`, with its vector and headline."""
    out = []
    for st in memory:
        if st.alerted_vectors is None:
            continue
        for k, (t, title) in enumerate(zip(st.alerted_times, st.alerted_titles, strict=False)):
            if abs(at - t) < memory_h * 3600.0 and k < len(st.alerted_vectors):
                out.append(Told(st.alerted_vectors[k], t, parse(title)))
    return out


def _fresh(x: Headline, told: Sequence[Told]) -> list[Development]:
    """The item's developments that no told item reported (same kind, arguments that agree)."""
    return [d for d in x.developments if not any(d.same_as(o) for t in told for o in t.headline.developments)]


def _what(devs: Sequence[Development]) -> str:
    return "; ".join(d.phrase for d in devs[:2])


def _choose(stories: Sequence[OpenStory], x: NoveltyItem, params: StoryParams) -> tuple[int | None, float, float]:
    """The best open story for `x`: (index or None, score, best member cosine)."""
    best_i, best_s, best_cos = None, -1e9, -1.0
    # names common to several open stories (Hamas, Biden) say nothing about *which* event this is
    background = topic_background(stories) if params.name_conflict or params.name_bonus else frozenset()
    for i, st in enumerate(stories):
        if not st.vectors.size:
            continue  # a story saved without vectors cannot be compared; it only ages out
        s, cos = _score(st, x, params, background)
        if s > best_s:
            best_i, best_s, best_cos = i, s, cos
    return best_i, best_s, best_cos


def decide(stories: Sequence[OpenStory], x: NoveltyItem, params: StoryParams,
           memory: Sequence[OpenStory] | None = None, parse: Callable[[str], Headline] = Headline.of) -> Assignment:
    """Choose a story for `x` among the open `stories` of its topic and decide what subscribers get.
    `memory` holds the topic's stories of the last `memory_h` hours, closed ones included (default: `stories`):
    what subscribers were already told is read from it.

    * `repeat` (no alert): a syndicated or near-identical copy, or an item that is not news
      (`newsworthy.AlertModel.judge`: commentary, a reaction, a recap, or a development the topic alerted on
      in the last `memory_h` hours, in whatever story); the reason gives p(new) and its parts.
    * `update` (alert): the item joins an alerted story and is news; "what's new" names the development.
    * `new_story` (alert): the item starts a story, is news and matched clearly (`strong_margin` above the
      topic threshold), or a held story is corroborated: a second outlet reports it within
      `corroboration_h` hours, or a clear match that is news joins it.
    * `held` (no alert yet): a new story that is news on a weak match waits for corroboration; it never
      alerts if none comes in time.
    """
    best_i, best_s, best_cos = _choose(stories, x, params)
    for i, st in enumerate(stories):  # a syndicated copy belongs with its original, whatever the score
        if x.item.content_hash and x.item.content_hash in st.hashes:
            return Assignment("repeat", i, best_s if i == best_i else None,
                              "syndicated copy (same text as an item already in the story)", None)
    joined = best_i is not None and best_s >= params.join_threshold
    if joined and best_cos >= params.duplicate_cosine:
        return Assignment("repeat", best_i, best_s, f"near-identical to an earlier report (cosine {best_cos:.2f})", None)
    if not params.material_updates:
        return _decide_by_facts(stories, x, best_i if joined else None, best_s, params)
    t = x.item.published_at.timestamp()
    told = told_items(stories if memory is None else memory, t, params.memory_h, parse)
    h = parse(x.item.title)
    j = params.alert_model.judge(h, x.vector, t, x.margin, told)
    news = j.p_new >= params.alert_model.threshold
    clear = x.margin is None or x.margin >= params.strong_margin
    what = _what(_fresh(h, told) or list(h.developments)) or "a development not alerted yet"
    old = None if best_i is None else best_s
    if joined:
        st = stories[best_i]  # type: ignore[index]
        if st.alerted:
            if news:
                return Assignment("update", best_i, best_s, f"same story (score {best_s:.2f}), new development: "
                                  f"{what}; {j.explain()}", what)
            return Assignment("repeat", best_i, best_s, f"same story (score {best_s:.2f}), not news: {j.explain()}",
                              None)
        # no alert yet: the story waits for corroboration (held), or nothing in it was news so far
        waited_h = (t - st.first_seen.timestamp()) / 3600.0
        second_outlet = x.item.outlet not in st.sources and waited_h <= params.corroboration_h
        # another outlet reporting a held story corroborates it (unless what it reports was told meanwhile); so
        # does a clear match that is news, in any story not alerted yet
        corroborated = st.waiting and second_outlet and j.p_same < 0.5 and not h.commentary
        if corroborated or (news and clear):
            how = (f"corroborated by a second outlet ({x.item.outlet}, {waited_h:.1f} h after the first report)"
                   if corroborated else "a clear match that is news")
            return Assignment("new_story", best_i, best_s, f"story {how}; {j.explain()}", None)
        if news or st.waiting:
            return Assignment("held", best_i, best_s, f"same story (score {best_s:.2f}), waiting for a second "
                              f"outlet; {j.explain()}", None)
        return Assignment("repeat", best_i, best_s, f"same story (score {best_s:.2f}), not news: {j.explain()}",
                          None)
    reason = "first report" if best_i is None else f"no open story close enough (best {best_s:.2f})"
    if not news:
        return Assignment("repeat", None, old, f"{reason}, but not news: {j.explain()}", None)
    if not params.corroboration or clear:
        return Assignment("new_story", None, old, f"{reason}; {j.explain()}", None)
    return Assignment("held", None, old, f"{reason}; weak match (margin {x.margin:.2f}): waits "
                      f"{params.corroboration_h:g} h for a second outlet; {j.explain()}", None)


def _decide_by_facts(stories: Sequence[OpenStory], x: NoveltyItem, best_i: int | None, best_s: float,
                     params: StoryParams) -> Assignment:
    """The earlier rule, kept as the evaluation's reference: every new story alerts, and an item joining a
    story is an update when its headline has any figure, name or quote the story has not seen."""
    if best_i is None:
        reason = "first report" if best_s == -1e9 else f"no open story close enough (best {best_s:.2f})"
        return Assignment("new_story", None, None if best_s == -1e9 else best_s, reason, None)
    st = stories[best_i]
    fresh = new_facts(st, x.facts, topic_background([o for k, o in enumerate(stories) if k != best_i]))
    if fresh:
        what = "; ".join(fresh[:3])
        return Assignment("update", best_i, best_s, f"same story (score {best_s:.2f}) with {what}", what)
    return Assignment("repeat", best_i, best_s, f"same story (score {best_s:.2f}), nothing new", None)


def start_story(key: int, x: NoveltyItem, decision: Decision = "new_story") -> OpenStory:
    f = x.facts
    alerting = decision in ("new_story", "update")
    return OpenStory(
        key=key, topic_id=x.topic_id, first_seen=x.item.published_at, last_seen=x.item.published_at,
        vectors=x.vector[None, :].astype(np.float32), times=(x.item.published_at.timestamp(),), item_count=1,
        sources=(x.item.outlet,), hashes=frozenset({x.item.content_hash} - {""}), words=f.words,
        names=f.names, numbers=f.numbers, quotes=f.quotes, title=x.item.title, args=f.args,
        # a story whose first item was not news (commentary, a repeat) is neither alerted nor waiting: a later
        # item that is news alerts it as a new story
        alerted=alerting, waiting=decision == "held",
        alerted_vectors=x.vector[None, :].astype(np.float32) if alerting else None,
        alerted_times=(x.item.published_at.timestamp(),) if alerting else (),
        alerted_titles=(x.item.title,) if alerting else (),
    )


def absorb(story: OpenStory, x: NoveltyItem, params: StoryParams, decision: Decision = "repeat") -> OpenStory:
    """The story with `x` added (first member always kept, then the most recent ones). When `x` alerts
    (new_story / update), it joins the story's told items (what later decisions compare with)."""
    vecs = np.vstack([story.vectors, x.vector[None, :]])
    times = (*story.times, x.item.published_at.timestamp())
    if len(vecs) > params.max_members:
        keep = [0, *range(len(vecs) - params.max_members + 1, len(vecs))]
        vecs, times = vecs[keep], tuple(times[k] for k in keep)
    f = x.facts
    alerting = decision in ("new_story", "update")
    return replace(
        story,
        first_seen=min(story.first_seen, x.item.published_at),
        last_seen=max(story.last_seen, x.item.published_at),
        vectors=vecs.astype(np.float32), times=times, item_count=story.item_count + 1,
        sources=story.sources if x.item.outlet in story.sources else (*story.sources, x.item.outlet),
        hashes=story.hashes | ({x.item.content_hash} - {""}),
        words=story.words | f.words, names=story.names | f.names, numbers=story.numbers | f.numbers,
        quotes=story.quotes | f.quotes, args=story.args | f.args,
        alerted=story.alerted or alerting,
        waiting=(story.waiting or decision == "held") and not alerting,
        **(_told_with(story, x, params.memory_h) if alerting else {}),
    )


_MAX_ALERTED = 32  # told items kept per story (besides the time limit, `memory_h`)


def _told_with(story: OpenStory, x: NoveltyItem, memory_h: float) -> dict[str, object]:
    """The story's told items (vectors, times, headlines) with `x` added, those older than `memory_h` before `x`
    dropped, and at most `_MAX_ALERTED` kept."""
    t = x.item.published_at.timestamp()
    old = story.alerted_vectors if story.alerted_vectors is not None else np.zeros((0, len(x.vector)), np.float32)
    keep = [k for k, at in enumerate(story.alerted_times[:len(old)]) if t - at < memory_h * 3600.0]
    keep = keep[-(_MAX_ALERTED - 1):]
    return {"alerted_vectors": np.vstack([old[keep], x.vector[None, :]]).astype(np.float32),
            "alerted_times": (*(story.alerted_times[k] for k in keep), t),
            "alerted_titles": (*(story.alerted_titles[k] for k in keep), x.item.title)}


@dataclass(frozen=True, slots=True)
class Step:
    """Result of clustering one item: the decision and the story it now belongs to."""

    assignment: Assignment
    story: OpenStory
    created: bool


def cluster_step(open_stories: Sequence[OpenStory], x: NoveltyItem, new_key: int, params: StoryParams,
                 memory: Sequence[OpenStory] | None = None, parse: Callable[[str], Headline] = Headline.of) -> Step:
    """Decide for one item and return the updated (or new) story. `open_stories` must already exclude the
    stories closed by the window at the item's time (see `is_open`); `memory` is the topic's stories of the
    last `memory_h` hours, closed ones included (see `decide`)."""
    return apply(open_stories, x, decide(open_stories, x, params, memory, parse), new_key, params)


def apply(open_stories: Sequence[OpenStory], x: NoveltyItem, a: Assignment, new_key: int, params: StoryParams) -> Step:
    """The story `x` belongs to once decision `a` is final (a caller may lower an update to a repeat first)."""
    if a.story_index is None:
        return Step(a, start_story(new_key, x, a.decision), True)
    return Step(a, absorb(open_stories[a.story_index], x, params, a.decision), False)


def headline_parser(size: int = 16384) -> Callable[[str], Headline]:
    """`Headline.of` remembering its last `size` headlines: every decision reads the headlines its topic was
    told (up to 32 per story for a week), so one run of decisions parses each told headline once, not once per
    decision (a backtest of 9,000 matches in 20 big stories spent most of its time re-parsing them)."""
    return functools.lru_cache(maxsize=size)(Headline.of)


def cluster(items: Iterable[NoveltyItem], params: StoryParams) -> list[tuple[int, Assignment]]:
    """Cluster items in the order given (date order) with no persistence; returns (story key, assignment)
    per item. Used by evaluation; the service goes through monitor.signal.stories with the same steps."""
    recent_by_topic: dict[str, list[OpenStory]] = {}
    out: list[tuple[int, Assignment]] = []
    next_key = 0
    keep_h = max(params.window_h, params.memory_h)
    parse = headline_parser()
    for x in items:
        at = x.item.published_at
        recent = [s for s in recent_by_topic.get(x.topic_id, []) if is_open(s, at, keep_h)]
        live_idx = [i for i, s in enumerate(recent) if is_open(s, at, params.window_h)]
        step = cluster_step([recent[i] for i in live_idx], x, next_key, params,
                            [s for s in recent if is_open(s, at, params.memory_h)], parse)
        if step.created:
            recent.append(step.story)
            next_key += 1
        else:
            recent[live_idx[step.assignment.story_index]] = step.story  # type: ignore[index]
        recent_by_topic[x.topic_id] = recent
        out.append((step.story.key, step.assignment))
    return out
