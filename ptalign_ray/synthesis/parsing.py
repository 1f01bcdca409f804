"""Robust parsing of the lists a small model writes (topics, questions).

Model output is messy: numbered or bulleted lists, bold titles, "Title: explanation" items,
preambles ("Sure! Here are ..."), comma-separated one-liners. These functions pull out clean,
normalised items and drop what cannot be used.
"""

from __future__ import annotations

import re
import unicodedata

_MARKER = re.compile(
    r"""^\s*(?:
        (?:\d{1,3}|[a-zA-Z])[\.\)\]:]\s+   # 1.  1)  a)  1:
      | \(\d{1,3}\)\s*                    # (1)
      | [-*\u2022\u2023\u25e6\u2043\u2219+]\s+   # - * bullet
      | \#{1,6}\s+                        # markdown heading
      | (?:topic|question|q)\s*\d*\s*[:.\-\)]\s*  # Topic 1:  Question:  Q1.
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_PREAMBLE = re.compile(
    r"^(sure|certainly|of course|okay|ok|here (are|is)|below (are|is)|these are|i hope|let me|note:|in summary)\b",
    re.IGNORECASE,
)
_QUESTION_START = re.compile(
    r"^(how|what|where|when|why|which|who|whom|whose|can|could|would|should|is|are|do|does|did|will|"
    r"write|explain|describe|tell|give|list|create|help|provide|generate|draft|compose|suggest|show|"
    r"teach|find|make|design|outline|plan|convince|recommend|i need|i want)\b",
    re.IGNORECASE,
)


def normalise(text: str) -> str:
    """Unicode-normalises, strips markdown emphasis, quotes and surrounding whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    text = re.sub(r"\*\*|__|`", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" \"'")


def _items(text: str) -> list[str]:
    """Splits model output into candidate list items (marker lines first, plain lines as fallback)."""
    lines = [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    marked = [_MARKER.sub("", ln, count=1) for ln in lines if _MARKER.match(ln)]
    if marked:
        return marked
    if len(lines) == 1 and lines[0].count(",") + lines[0].count(";") >= 2:
        return re.split(r"[;,]\s*", lines[0])
    return lines


def parse_topics(text: str, max_words: int = 10) -> list[str]:
    """Topics from a brainstormed list: keeps the title of 'Title: explanation' items."""
    out: list[str] = []
    for item in _items(text):
        item = normalise(item)
        if not item or _PREAMBLE.match(item) or item.endswith(":") and len(item.split()) > 6:
            continue
        title = re.split(r"\s*(?::|\s-\s|\s\u2013\s|\s\u2014\s)\s*", item, maxsplit=1)[0]
        title = normalise(title).rstrip(".!;,")
        words = title.split()
        if not 1 <= len(words) <= max_words or not re.search(r"[A-Za-z]", title):
            continue
        out.append(title)
    return unique(out)


def parse_questions(text: str, min_chars: int = 15, max_chars: int = 300) -> list[str]:
    """Questions / requests from a written list; drops fragments, headings and chatter."""
    out: list[str] = []
    for item in _items(text):
        item = normalise(item)
        item = re.sub(r"^(question|q)\s*\d*\s*[:.\-]\s*", "", item, flags=re.IGNORECASE)
        if _PREAMBLE.match(item) or not (min_chars <= len(item) <= max_chars):
            continue
        if "?" in item:
            item = item[: item.index("?") + 1]  # drop trailing commentary after the question
        elif not _QUESTION_START.match(item):
            continue
        # "Request - explanation of why it matters": keep the request.
        item = re.split(r"\s(?:-|\u2013|\u2014)\s", item, maxsplit=1)[0].rstrip(" ;,:")
        if len(item) < min_chars or len(item.split()) < 4:
            continue
        out.append(item[0].upper() + item[1:])
    return unique(out)


def unique(items: list[str]) -> list[str]:
    """Order-preserving exact dedup, case- and punctuation-insensitive."""
    seen: set[str] = set()
    out = []
    for it in items:
        key = re.sub(r"[^a-z0-9]+", " ", it.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            out.append(it)
    return out
