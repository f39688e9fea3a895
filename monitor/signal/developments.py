"""Developments: what a headline says *happened* (a release, a deal, an extension, talks moving city, a new
count), read with a small lexicon of event verbs. Pure: no I/O, no state.

Novelty uses this twice. An item that joins a story is an *update* only when it carries a development the
topic's subscribers have not been alerted to (not merely an unseen name or quote), and "what's new" is the
development in words. And an item whose headline is commentary, an explainer, a live blog or a recap is
never a development, whatever it mentions.

A development's identity is its kind plus its arguments (places, counted figures, ordinals such as "second
round"); two mentions are the same development when the kinds agree, they are close in time (the caller
decides how close) and their arguments do not contradict each other (13 hostages freed vs 17 hostages
freed are two releases; "talks in Cairo" is not "talks in Doha").

The lexicon is general news English (release, agree, extend, collapse, delay, begin, propose, meet,
travel, call, warrant, count); nothing in it names a particular event of the dev period.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- what is not a development ------------------------------------------------------------------------------

# Headlines that recap, explain, comment or point to a live page: not a development even when they mention
# one. Matched on the headline, case-insensitively.
_COMMENTARY = re.compile(
    r"^\s*(?:live|watch|video|opinion|analysis|explainer|explained|podcast|newsletter|editorial|comment|"
    r"letters?|the papers|first ?thing|firstft|morning rundown|evening briefing|briefing|in pictures|photos|"
    r"the latest|timeline|fact ?check|view|inside|behind)\b"
    r"|\blive(?:\s+updates?|\s+blog|\s+news|:)|\bas it happened\b|\bkey events\b|\bwhat we know\b|"
    r"\bwhat to know\b|\bthings to know\b|\bwhat (?:is|are|was|were|does|do|did|would|could|will)\b|"
    r"\bwho (?:is|are|was|were)\b|^\s*(?:how|why|where|when|can|could|should|will|would|is|are|does|do)\b|"
    r"\?\s*$|\bday \d+ of\b|\|\s*(?:first thing|the papers|morning|evening|live)|\brundown\b|\bnewsletter\b|"
    r"\bexplainer\b|\banalysis\b|\bopinion\b|\bcould mean\b|\bwhat'?s next\b|\blessons?\b|\bpodcast\b|"
    r"[:|–—]\s*(?:how|why|what|who|inside|behind)\b|'s dilemma\b|\bmorning rundown\b",
    re.IGNORECASE,
)


def commentary(title: str) -> str | None:
    """Why `title` is commentary/explainer/live blog/recap rather than a report of a development, or None."""
    m = _COMMENTARY.search(title)
    return f"commentary, explainer or recap ({m.group(0).strip()!r})" if m else None


# --- developments ---------------------------------------------------------------------------------------------

# Future, conditional or reported-intention markers: "Hamas ready to free", "deal could be agreed".
_UNREALISED = re.compile(
    r"\b(?:to|will|would|could|may|might|should|ready|willing|prepared|preparing|plans?|seeks?|seeking|hopes?|"
    r"hopeful|expected|expects|set|poised|push(?:es|ing)?|efforts?|urges?|urging|calls? for|calling for|"
    r"if|unless|only|until|demands?|wants?|offers?|vows?|threatens?|pledges?|considers?|weighs?|mulls?|"
    r"possible|potential|close to|nears?|nearing|cannot|can't|won't|not|no|refuses?|refused|fails? to|without)\b",
    re.IGNORECASE,
)
# The noun "release" as the goal of talks, terms or pressure ("conditions for hostages' release", "talks on the
# release of", "negotiations ongoing for release of") reports no release; matched against the words just before
# it (its noun phrase), so "freed after weeks of talks" or "about 100 freed" are untouched.
_GOAL_OF = re.compile(
    r"(?:\b(?:for|towards?|agree(?:s|d)? on)|\b(?:talks|negotiations?|negotiating|conditions?|terms|deal|agreement|"
    r"bid|efforts?|plea|appeals?|push|pressure|demands?|calls?)(?:\s+(?:on|for|over|about|towards?))?)\s+"
    r"(?:the\s+|a\s+)?"
    r"(?:[\w-]+['’]s?\s+)?$",
    re.IGNORECASE,
)

# (kind, label for "what's new", pattern). Order matters only for the label of a headline with several.
_KINDS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (k, label, re.compile(p, re.IGNORECASE)) for k, label, p in (
        ("extension", "extension", r"\bextend(?:s|ed|ing)?\b|\bextension\b|\bprolong(?:s|ed)?\b"),
        ("collapse", "collapse or end",
         r"\bcollaps(?:e|es|ed|ing)\b|\bbr(?:eak|eaks|oke) down\b|\b(?:truce|ceasefire|cease-fire|pause) "
         r"(?:ends?|ended|expires?|expired|is over)\b|\bresum(?:e|es|ed) (?:fighting|strikes|bombing|war|"
         r"combat|attacks?)\b|\bcall(?:s|ed)? off\b|\bsuspend(?:s|ed)?\b|\bhalt(?:s|ed)\b|\bpull(?:s|ed)? out\b"
         r"|\bwalk(?:s|ed)? out\b|\bstall(?:s|ed)?\b|\bon hold\b|\bstopped\b|\bfroze[n]?\b|\bfreez(?:e|es)\b"),
        ("delay", "delay", r"\bdelay(?:s|ed)?\b|\bpostpon(?:e|es|ed)\b|\bpushed back\b|\bhitch\b|\blast-minute snag\b"),
        ("start", "start",
         r"\b(?:truce|ceasefire|cease-fire|pause|deal)\b[^.;:]{0,40}\b(?:begins?|began|starts?|started|takes? effect|"
         r"took effect|comes? into (?:force|effect)|came into (?:force|effect)|goes into effect|went into effect|"
         r"holds|holding|under ?way)\b|\b(?:begins?|began|starts?|started)\b[^.;:]{0,20}\b(?:truce|ceasefire|pause)\b"),
        ("deal", "deal agreed",
         r"\bagree(?:s|d)?\b|\bagreement (?:reached|struck|signed)\b|\bdeal (?:reached|struck|agreed|approved|signed|"
         r"done|sealed|announced)\b|\b(?:reach|reaches|reached|strike|strikes|struck|seal|seals|sealed|approve|"
         r"approves|approved|sign|signs|signed|announce|announces|announced|clinch|clinches|clinched|back|backs|"
         r"backed|endorse|endorses|endorsed)\b[^.;:]{0,30}\b(?:deal|truce|agreement|ceasefire|pause)\b"),
        ("release", "release",
         r"\b(?:frees?|freed|freeing|releas(?:e|es|ed|ing)|set(?:s)? free|hand(?:s|ed)? over|handover|"
         r"return(?:s|ed)? home|let go|walk(?:s|ed)? free|reunit(?:e|es|ed))\b"),
        ("proposal", "proposal or terms",
         r"\bpropos(?:al|als|es|ed)\b|\bcounter-?(?:proposal|offer)\b|\boffers?\b|\boffered\b|\bterms\b|"
         r"\bconditions?\b|\bin (?:exchange|return) for\b|\bdemands?\b|\bultimatum\b|\bframework\b|\bdraft\b"),
        ("talks", "talks",
         r"\btalks?\b|\bnegotiat(?:ion|ions|ors?|ing|es|ed)\b|\bmediat(?:ion|ors?|ing|es|ed)\b|\bdelegation\b|"
         r"\benvoy\b|\bround\b|\bdiscuss(?:es|ed|ing)?\b"),
        ("travel", "travel or meeting",
         r"\b(?:arriv(?:e|es|ed|ing)|travel(?:s|led|ed|ling|ing)?|head(?:s|ed|ing)? (?:to|for)|visit(?:s|ed|ing)?|"
         r"land(?:s|ed)? in|fl(?:y|ies|ew) to|meet(?:s|ing)?|met|summit|trip|sends?|sent|dispatch(?:es|ed)?)\b"),
        ("call", "call",
         r"\b(?:spoke|speaks|phon(?:e|ed|es)|call(?:s|ed)? with|calls? (?:the )?(?:emir|president|king|prime minister|"
         r"premier|sheikh)|phone call|telephone)\b"),
        ("progress", "progress reported",
         r"\bprogress\b|\bbreakthrough\b|\bclose to (?:a )?(?:deal|agreement)\b|\bnear(?:s|ing)? (?:a )?(?:deal|agreement)\b|"
         r"\bimminent\b|\bwithin reach\b|\bfinal stages?\b|\bnarrow(?:s|ed|ing)? (?:the )?gaps?\b"),
        ("warrant", "court step",
         r"\bwarrants?\b|\bprosecutors?\b|\binvestigat(?:e|es|ed|ion|ing)\b|\brefer(?:s|red|ral)\b|\bsubpoena\b|"
         r"\bcharges?\b|\bindict(?:s|ed|ment)?\b|\bjurisdiction\b|\bapplication\b|\bappl(?:y|ies|ied) for\b|"
         r"\bcomplaint\b|\blawsuit\b|\bfil(?:e|es|ed) (?:a )?(?:case|suit|complaint)\b|\bcase\b|\binquiry\b|\bprobe\b"),
        ("event", "event",
         r"\b(?:strik(?:e|es)|struck|hits?|kill(?:s|ed|ing)|attack(?:s|ed)|explod(?:es|ed)|crash(?:es|ed)|"
         r"die[sd]|dead|wins?|won|elected|resign(?:s|ed)|arrest(?:s|ed)|sentenc(?:es|ed)|convicted|seiz(?:es|ed)|"
         r"captur(?:es|ed)|launch(?:es|ed)|invad(?:es|ed)|evacuat(?:es|ed)|rescu(?:es|ed)|shot|opens?|opened|"
         r"clos(?:es|ed)|ban(?:s|ned)|fire[sd]|sack(?:s|ed)|oust(?:s|ed)|raid(?:s|ed))\b"),
        ("stance", "stated position",
         r"\breject(?:s|ed)?\b|\baccept(?:s|ed)?\b|\bsupports?\b|\bbacks?\b|\burg(?:e|es|ed)\b|\bpress(?:es|ed)?\b|"
         r"\bpressur(?:e|es|ed)\b|\binsist(?:s|ed)?\b|\bwarn(?:s|ed)?\b|\bcall(?:s|ed)? for\b|\bdemand(?:s|ed)?\b|"
         r"\bconsider(?:s|ed)?\b|\bopen to\b|\brefus(?:e|es|ed)\b|\brule(?:s|d)? out\b|\bno (?:ceasefire|cease-fire|truce|pause)\b"),
    )
)

# Counted things: a figure followed (within a word or two) by one of these is a count worth reporting.
_COUNTED = (r"hostages?|captives?|prisoners?|detainees?|israelis|palestinians|americans|thais|women|children|"
            r"minors|people|civilians|soldiers|foreigners|nationals|citizens|dead|killed|deaths|trucks|lorries|"
            r"bodies|names|days?|hours?|families|teenagers|mothers|elderly|foreign nationals")
_NUMBER = (r"\d{1,3}(?:,\d{3})+|\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
           r"fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty(?:-\w+)?|thirty(?:-\w+)?|forty(?:-\w+)?|"
           r"fifty(?:-\w+)?|sixty|seventy|eighty|ninety|a hundred|dozens?")
_COUNT = re.compile(rf"\b({_NUMBER})(?:\s+|-)(?:more\s+|further\s+|other\s+|[A-Z][a-z]+\s+|[a-z]+\s+)?({_COUNTED})\b",
                    re.IGNORECASE)
_ORDINAL = re.compile(
    r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|final|last|next|latest|new|another|"
    r"\d+(?:st|nd|rd|th))\s+(?:(?:batch|group|round|day|phase|stage|exchange|swap|release|wave|list|set|"
    r"handover|extension)s?)\b",
    re.IGNORECASE,
)
_TOLL = re.compile(r"\b(?:death )?toll\b[^.;:\d]{0,40}?(\d{1,3}(?:,\d{3})+|\d+)\b", re.IGNORECASE)
_MORE = re.compile(r"\b(?:more|another|further|fresh|new|next|again)\b", re.IGNORECASE)
_FURTHER = frozenset(("ord:more",))
_WORDNUM = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
            "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
            "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
            "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
            "ninety": "90", "a hundred": "100"}
_ORDINAL_NORM = {"first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6",
                 "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10"}
# Capitalised words after "in"/"to"/"from"/"at": where something happened or moved to.
_PLACE = re.compile(r"\b(?:in|to|from|at|for|near)\s+((?:[A-Z][a-z]+)(?:\s+[A-Z][a-z]+)?)")
_NOT_PLACE = frozenset(("gaza", "israel", "the", "a", "hamas", "us", "u", "un", "israeli", "palestinian"))


def _num(raw: str) -> str | None:
    low = raw.lower().replace(",", "")
    if low.isdigit():
        return str(int(low))
    if low.startswith("dozen"):
        return None  # vague
    head = low.split("-")[0]
    return _WORDNUM.get(low) or _WORDNUM.get(head)


@dataclass(frozen=True, slots=True)
class Development:
    """One thing a headline says happened: its kind, the arguments that tell it apart from another of the
    same kind (counts "17 hostages", places "cairo", ordinals "round 2"), and a phrase for "what's new"."""

    kind: str
    args: frozenset[str]
    phrase: str

    def conflicts(self, other: Development) -> bool:
        """Both state an argument of the same sort (a count of the same thing, an ordinal, a place) and
        they differ: two different developments of one kind."""
        for sort in ("count:", "ord:", "place:", "actor:"):
            mine = {a for a in self.args if a.startswith(sort)} - _FURTHER
            theirs = {a for a in other.args if a.startswith(sort)} - _FURTHER
            if sort == "count:":
                # two counts with no value in common ("13 hostages" / "17 more hostages", "3-day" / "5-day")
                if mine and theirs and not ({a.split(":")[1] for a in mine} & {a.split(":")[1] for a in theirs}):
                    return True
            elif mine and theirs and not (mine & theirs):
                return True
        return False

    def same_as(self, other: Development) -> bool:
        """Same kind, no contradicting argument, and not announced as a further one ("two *more* hostages",
        "*another* round") after one that was not."""
        if self.kind != other.kind or self.conflicts(other):
            return False
        return not (_FURTHER & self.args and not _FURTHER & other.args)


def _noun(n: str) -> str:
    n = n.lower()
    return n[:-1] if n.endswith("s") and n not in ("days", "hours") else n


def _title_case(text: str) -> bool:
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'’\-]*", text) if len(w) > 3]
    return len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.7 * len(words)


def arguments(title: str) -> frozenset[str]:
    """Distinguishing arguments of a headline: counted figures, ordinals, places (not read from a Title-Case
    headline, where every word is capitalised)."""
    args: set[str] = set()
    for m in _COUNT.finditer(title):
        v = _num(m.group(1))
        if v is not None:
            args.add(f"count:{v}:{_noun(m.group(2))}")
    for m in _TOLL.finditer(title):
        args.add(f"count:{m.group(1).replace(',', '')}:dead")
    if _MORE.search(title):
        args.add("ord:more")  # announced as a further instance of its kind
    for m in _ORDINAL.finditer(title):
        w = m.group(1).lower()
        if w in ("new", "another", "next", "latest", "final", "last"):
            args.add(f"ord:{w}")
        else:
            args.add("ord:" + _ORDINAL_NORM.get(w, re.sub(r"\D", "", w)))
    for m in () if _title_case(title) else _PLACE.finditer(title):
        p = m.group(1).lower()
        if p.split()[0] not in _NOT_PLACE:
            args.add(f"place:{p}")
    return frozenset(args)


_ACTOR_KINDS = frozenset(("stance", "call", "travel", "proposal"))
_SUBJECT = re.compile(r"^\s*(?:[A-Z][\w.]*\s+){0,3}?([A-Z][a-z]{2,}|[A-Z]{2,})\b")
_NOT_ACTOR = frozenset(("the", "a", "an", "new", "more", "first", "after", "as", "in", "on", "two", "three"))


def _actor(title: str) -> str | None:
    """Who says/does it: the first capitalised word of a headline ("Netanyahu says..." -> netanyahu)."""
    for w in re.findall(r"[A-Za-z][\w.'’]*", title)[:4]:
        low = w.lower().rstrip(".").replace("’s", "").replace("'s", "")
        if w[0].isupper() and low not in _NOT_ACTOR and len(low) > 1:
            return low
    return None


def _realised(title: str, m: re.Match[str]) -> bool:
    """The event word `m` is not under a future/conditional marker within the few words before it, nor the
    noun "release" named as a goal (`_GOAL_OF`)."""
    before = title[max(0, m.start() - 40):m.start()]
    if m.group(0).lower() == "release" and _GOAL_OF.search(before):
        return False
    return not _UNREALISED.search(" ".join(before.split()[-4:]))


def read_developments(title: str) -> tuple[Development, ...]:
    """The developments a headline reports, most specific kind first; empty for commentary. A release or a
    deal under a future/conditional marker ("ready to free", "could agree") is a proposal/terms instead."""
    if commentary(title):
        return ()
    args = arguments(title)
    actor = _actor(title)
    out: list[Development] = []
    kinds: set[str] = set()
    for kind, label, pat in _KINDS:
        m = pat.search(title)
        if not m:
            continue
        k, lab = kind, label
        if kind in ("release", "deal", "extension", "start"):
            # realised when any mention is ("US works for release of more hostages after 2 are freed")
            m = next((r for r in pat.finditer(title) if _realised(title, r)), None) or m
            if not _realised(title, m):
                k, lab = "proposal", "proposal or terms"
        if k in kinds:
            continue
        kinds.add(k)
        if k == "count":
            continue
        a = args | ({f"actor:{actor}"} if actor and k in _ACTOR_KINDS else set())
        out.append(Development(k, frozenset(a), _phrase(lab, a, title, m)))
    counts = frozenset(a for a in args if a.startswith("count:") and not a.endswith((":day", ":hour")))
    if counts and not (kinds & {"release", "deal", "extension", "proposal", "event"}):
        out.append(Development("count", counts, _phrase("new count", counts, title, None)))
    return tuple(out)


def _phrase(label: str, args: frozenset[str], title: str, m: re.Match[str] | None) -> str:
    """"release (two more hostages; second exchange)": the kind in words, then the figures, ordinals and
    places as the headline writes them."""
    details = [c.group(0) for c in _COUNT.finditer(title)] + [c.group(0) for c in _TOLL.finditer(title)]
    details += [o.group(0) for o in _ORDINAL.finditer(title)]
    details += [a.split(":", 1)[1].title() for a in sorted(args) if a.startswith("place:")]
    return f"{label} ({', '.join(details)})" if details else label
