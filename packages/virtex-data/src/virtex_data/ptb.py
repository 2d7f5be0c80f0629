"""The tokenisation the COCO caption evaluation applies, re-implemented in Python (no Java).

The COCO toolkit (``pycocoevalcap``) pipes every caption through Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` and then drops the tokens in its ``PUNCTUATIONS`` list.
:func:`coco_tokenize` reproduces that on caption-like text:

- lower-cased; ``, ; : ? ! . ...`` split off (``1,000``, ``10:30``, ``2.5`` stay whole, runs of
  ``?``/``!`` are one token, ``..``+ is an ellipsis);
- clitics split: ``dog's -> dog 's``, ``dogs' -> dogs '``, ``don't -> do n't``,
  ``can't -> ca n't``, ``we're/I'm/you'll/she'd/we've``; ``cannot -> can not``,
  ``gonna -> gon na`` (``gotta``, ``wanna``, ``gimme``, ``lemme`` alike); ``o'clock``, ``'em``,
  ``'til``, ``'80s`` stay whole;
- hyphenated words (``black-and-white``, ``3-year-old``) and slashed words (``and/or``) stay
  whole; a dangling ``-`` and ``--`` are split off;
- abbreviations keep their period (``mr.``, ``st.``, ``e.g.``, ``u.s.``, ``a.m.``, single
  letters); ``etc.`` and ``u.s.`` at the very end of a caption also yield a sentence ``.``;
- quotes become `````` / ``''`` / ````` / ``'``; brackets become ``-lrb- -rrb- -lsb- -rsb-
  -lcb- -rcb-`` and, because the toolkit compares its (upper-case) punctuation list with the
  lower-cased output, these bracket tokens are KEPT by the COCO evaluation, as here;
- ``$ # % * + = ~ ^ | \\`` are split off; typographic quotes, dashes and ``…`` are mapped to
  their ASCII forms, ``£`` to ``#``, ``€`` to ``$``, ``¢`` to ``cents``.

Known differences from the Java lexer (rare in captions; see ``CAPTIONING.md``): emoticons,
feet-and-inches (``6'2"``), times glued to ``am``/``pm`` (``5:30pm``) and its full abbreviation
lists. ``tests/test_ptb.py`` compares against the Java tokenizer when Java is available.
"""

from __future__ import annotations

import re

__all__ = ["COCO_PUNCTUATIONS", "coco_tokenize", "ptb_tokenize"]

#: Tokens the COCO toolkit drops after PTB tokenisation (its list verbatim: the bracket tokens
#: are upper-case there and therefore never match the lower-cased output).
COCO_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-"]
    + [".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_UNICODE = {
    "\u2019": "'",  # right single quote / apostrophe
    "\u2018": "'",  # left single quote
    "\u201c": '"',
    "\u201d": '"',
    "\u2014": " -- ",  # em dash
    "\u2013": " -- ",  # en dash
    "\u2026": " ... ",
    "\u00a3": " # ",
    "\u20ac": " $ ",
    "\u00a2": " cents ",
}
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}
_BRACKETS = {
    "(": "-lrb-",
    ")": "-rrb-",
    "[": "-lsb-",
    "]": "-rsb-",
    "{": "-lcb-",
    "}": "-rcb-",
}
_BRACKET_TOKENS = frozenset(_BRACKETS.values())

# Abbreviations that keep their period (lower case, without the period).
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "prof",
        "gen",
        "rep",
        "sen",
        "gov",
        "lt",
        "col",
        "sgt",
        "capt",
        "mt",
        "ft",
        "ave",
        "blvd",
        "rd",
        "inc",
        "co",
        "corp",
        "ltd",
        "bros",
        "vs",
        "etc",
        "al",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "tues",
        "wed",
        "thu",
        "thurs",
        "fri",
    ]
)
_ACRONYM = re.compile(r"^(?:[a-z]\.|[a-z]{1,2}(?:\.[a-z]{1,2})+\.)$")
_CLITICS = ("'s", "'m", "'d", "'ll", "'re", "'ve")
_LEADING_APOSTROPHE_WORDS = frozenset(["'em", "'cause", "'til", "'n'", "'bout", "'round"])
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
    "y'all": ("y'", "all"),
}

_PERIOD_RUN = re.compile(r"\.{2,}")
_DASHES = re.compile(r"--+")
_BANGS = re.compile(r"[?!]+")
_SYMBOLS = re.compile(r"[;$#%*+=~^|\\\u00a5]")
_COMMA_COLON = re.compile(r"[,:](?!\d)|(?<=[^\d\s])[,:]")
_SLASH = re.compile(r"(?<![0-9A-Za-z])/|/(?![0-9A-Za-z])")
_QUOTE = re.compile(r'"')
_DECADE = re.compile(r"^'\d0s$")


def _quote(match: re.Match[str]) -> str:
    # The Java lexer opens a quote that a letter or digit follows and closes any other.
    text = match.string
    end = match.end()
    return " `` " if end < len(text) and text[end].isalnum() else " '' "


def _is_abbreviation(word: str, first: bool) -> bool:
    """Whether ``word`` (lower case, ending in ".") keeps its period."""
    stem = word[:-1]
    if len(stem) == 1:  # an initial, except a caption's first word ("A." -> "a .")
        return stem.isalpha() and not first
    return stem in _ABBREVIATIONS or _ACRONYM.match(word) is not None


def _period_run(match: re.Match[str]) -> str:
    # The first period of a run after an abbreviation is the abbreviation's ("dr...." ->
    # "dr. ..."); of the rest, two periods are two tokens and three or more an ellipsis.
    run = match.group(0)
    before = re.search(r"[a-z.]*$", match.string[: match.start()])
    word = before.group(0) if before else ""
    head = ""
    if word and _is_abbreviation(word + ".", first=False):
        head, run = ".", run[1:]
    if len(run) == 1:
        return head + " . "
    return head + (" . . " if len(run) == 2 else " ... ")


def _split_chunk(chunk: str, first: bool) -> list[str]:
    """PTB tokens of one whitespace-free, already punctuation-separated chunk (lower case);
    ``first``: whether it starts the caption."""
    prefix: list[str] = []
    suffix: list[str] = []
    changed = True
    while changed and len(chunk) > 1:
        changed = False
        if chunk.endswith("-"):
            suffix.insert(0, "-")
            chunk, changed = chunk[:-1], True
        elif chunk.endswith(".") and chunk != "...":
            stem = chunk[:-1]
            if not _is_abbreviation(chunk.lstrip(".-'`"), first):
                suffix.insert(0, ".")
                chunk, changed = stem, True
        elif chunk.endswith("'") and chunk not in ("'n'", "y'"):
            suffix.insert(0, "'")
            chunk, changed = chunk[:-1], True
        if changed or len(chunk) < 2:
            continue
        lead, after = chunk[0], chunk[1]
        if (
            lead == "`"
            or lead == "'"
            and not (
                chunk in _LEADING_APOSTROPHE_WORDS
                or chunk in _SPLIT_WORDS
                or chunk in _CLITICS
                or _DECADE.match(chunk)
            )
        ):
            prefix.append("`")
            chunk, changed = chunk[1:], True
        elif lead in "-." and not after.isdigit():
            # "-well" -> "- well", ".tv" -> ". tv"; "-2" and ".5" are numbers.
            prefix.append(lead)
            chunk, changed = chunk[1:], True
    middle: list[str]
    if chunk in _SPLIT_WORDS:
        middle = list(_SPLIT_WORDS[chunk])
    elif len(chunk) > 3 and chunk.endswith("n't"):
        middle = [chunk[:-3], "n't"]
    else:
        middle = [chunk]
        for clitic in _CLITICS:
            if len(chunk) > len(clitic) and chunk.endswith(clitic):
                middle = [chunk[: -len(clitic)], clitic]
                break
    return prefix + [token for token in middle if token] + suffix


def ptb_tokenize(text: str) -> list[str]:
    """PTB tokens of one caption, lower-cased, punctuation included (as the Java tokenizer with
    ``-preserveLines -lowerCase`` prints them)."""
    for entity, plain in _ENTITIES.items():
        text = text.replace(entity, plain)
    for char, plain in _UNICODE.items():
        text = text.replace(char, plain)
    text = text.replace("\n", " ").lower()
    text = _PERIOD_RUN.sub(_period_run, text)
    text = _QUOTE.sub(_quote, text)
    for bracket, token in _BRACKETS.items():
        text = text.replace(bracket, f" {token} ")
    text = _DASHES.sub(" -- ", text)
    text = _BANGS.sub(lambda m: f" {m.group(0)} ", text)
    text = _SYMBOLS.sub(lambda m: f" {m.group(0)} ", text)
    text = _COMMA_COLON.sub(lambda m: f" {m.group(0)} ", text)
    text = _SLASH.sub(" / ", text)
    tokens: list[str] = []
    for chunk in text.split():
        if chunk in ("...", "--", "``", "''") or chunk in _BRACKET_TOKENS:
            tokens.append(chunk)
        else:
            tokens.extend(_split_chunk(chunk, first=not tokens))
    return tokens


def coco_tokenize(text: str) -> str:
    """A caption as the COCO evaluation sees it: PTB tokens without its punctuation list,
    joined by single spaces."""
    return " ".join(token for token in ptb_tokenize(text) if token not in COCO_PUNCTUATIONS)
