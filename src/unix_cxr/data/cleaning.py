"""Report cleaning: raw chest X-ray report text -> the authors' cleaned form `FINDINGS: ... IMPRESSION: ...`.

The paper (spec §6.1) cleaned MIMIC-CXR reports with DeepSeek plus a self-check pass; its prompts are not
published. This module is the deterministic, offline replacement, with an optional LLM backend:

* `clean_report(text) -> CleanResult` applies `RULES`, one ordered table of named rules, in four scopes:
  ``document`` (the raw text), ``sections`` (header-based extraction of FINDINGS / IMPRESSION, dropping
  EXAMINATION, INDICATION, HISTORY, TECHNIQUE, COMPARISON, ... and using untitled text as FINDINGS when a
  report has no FINDINGS header), ``section`` (the text of one kept section) and ``sentence`` (each sentence;
  a rule may rewrite it or drop it). `CleanResult.changes` counts what each rule changed; a report with no
  FINDINGS or IMPRESSION, or with nothing left after cleaning, has ``report=None`` and a ``dropped_reason``.
  Cleaning is idempotent: a cleaned report passes through unchanged with no rule firing.
* `LLMRewriter` rewrites a report through an OpenAI-compatible chat-completions endpoint (standard library
  HTTP only), then asks the model whether the rewrite keeps every finding and adds none (the paper's
  "self-judgment"); on anything but "yes", or on an HTTP error, the rule-based result is used and the
  reason is recorded in ``changes``. Off unless a caller constructs it (``unix-cxr data clean --llm-*``).

Like the authors' data (spec §6.1: "stable" and "unchanged" survive in many cleaned references), explicit
comparisons with prior studies are removed but temporal adjectives are kept. See docs/data.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

log = logging.getLogger(__name__)

Scope = Literal["document", "sections", "section", "sentence"]
SCOPE_ORDER: tuple[Scope, ...] = ("document", "sections", "section", "sentence")

DROP_EMPTY = "empty report"
DROP_NO_SECTION = "no FINDINGS or IMPRESSION section"
DROP_NOTHING_LEFT = "nothing left after cleaning"


@dataclass(frozen=True)
class CleanResult:
    """`report` is `FINDINGS: ... [IMPRESSION: ...]` (or `IMPRESSION: ...` alone), None when dropped."""

    report: str | None
    changes: dict[str, int]  # rule name -> how many times it changed something; only rules that fired, in order
    dropped_reason: str | None = None


class Sections(NamedTuple):
    findings: str
    impression: str
    found: bool  # a FINDINGS / IMPRESSION section, or untitled text standing in for FINDINGS, exists


@dataclass(frozen=True)
class Rule:
    """One named cleaning rule. `apply` maps text to (new text, count); a `sections` rule returns `Sections`; a
    `sentence` rule also takes the sentence's `tokens` (or None) and returns "" to drop the sentence."""

    name: str
    scope: Scope
    description: str
    example: tuple[str, str]  # (before, after) as shown in docs/data.md
    apply: Callable[..., tuple[object, int]]
    # sentence rules: the rule runs only on sentences with at least one of these words (as `tokens` splits them);
    # every pattern of the rule needs one of them, so this only saves time
    trigger: frozenset[bytes] | None = None


# --------------------------------------------------------------------------------------------------------------
# shared vocabulary
_I = re.IGNORECASE
_BLANK = r"_{2,}"
_STUDY_NOUN = (r"(?:studies|study|exams?|examinations?|radiographs?|radiography|films?|cxrs?|x-?rays?|images?|"
               r"ones?|views?|ct|scans?)")
_PRIOR_ADJ = r"(?:most\s+recent|recent|prior|previous|preceding|earlier|last|outside|old)"
_PRIOR_WORD = re.compile(rf"\b(?:prior|previous|preceding|earlier|recent|last|yesterday|today)\b|{_BLANK}")  # lower
_DATEISH = (rf"(?:{_BLANK}|\d{{1,4}}[/.-]\d{{1,2}}(?:[/.-]\d{{1,4}})?|today|yesterday|earlier\s+today|"
            r"(?:earlier\s+)?the\s+same\s+day|\d{1,2}:\d{2}(?:\s*[ap]\.?m\.?)?)")
_CONTENT_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_PUNCTUATION = b"!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~"
_TOKEN_BYTES = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ" + _PUNCTUATION,
                               b"abcdefghijklmnopqrstuvwxyz" + b" " * len(_PUNCTUATION))


def tokens(text: str) -> frozenset[bytes]:
    """The words of `text` as regex `\\b` sees them (runs of letters, digits and `_`), lower case, UTF-8 (bytes are
    several times faster to split than str)."""
    return frozenset(text.encode("utf-8").translate(_TOKEN_BYTES).split())


def _keys(text: str) -> frozenset[bytes]:
    return frozenset(text.encode("utf-8").split())


# --------------------------------------------------------------------------------------------------------------
# document scope
def _report_banner(text: str) -> tuple[str, int]:
    at = text.find("FINAL REPORT")  # upper case, on a line of its own, as in MIMIC-CXR
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        end = len(text) if end < 0 else end + 1
        if not text[start:at].strip() and not text[at + 12:end].strip(" \t\r\n:"):
            return text[end:], 1
        at = text.find("FINAL REPORT", at + 12)
    return text, 0


# --------------------------------------------------------------------------------------------------------------
# sections scope
_KEEP_HEADERS = {
    "findings": "findings", "finding": "findings", "findings and impression": "findings",
    "findings/impression": "findings", "findings & impression": "findings", "impression and findings": "findings",
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "opinion": "impression",
}
_META_HEADERS = (
    "examination", "exam", "exams", "type of examination", "examination type", "study", "procedure", "view",
    "views", "indication", "indications", "clinical indication", "reason for exam", "reason for examination",
    "reason for this examination", "reason for study", "reason for referral", "history", "clinical history",
    "medical history", "hx", "clinical information", "clinical info", "clinical data", "clinical details",
    "underlying medical condition", "medical condition", "admitting diagnosis", "technique", "techniques",
    "comparison", "comparisons", "comparison studies", "comparison study", "comparison exam", "comparison exams",
    "prior", "priors", "prior studies", "prior study", "notification", "notifications", "recommendation",
    "recommendations", "recommendation(s)", "follow-up", "followup", "wet read", "wet read version",
    "provisional findings impression (pfi)", "pfi", "addendum", "date", "dictated by", "contrast",
    "radiation dose", "dose",
)
_HEADER_KIND = {**_KEEP_HEADERS, **{name: "meta" for name in _META_HEADERS}}


_LONGEST_HEADER = max(len(name) for name in _HEADER_KIND) + 8  # the colon's furthest place (spaces allowed)
_BARE_HEADERS = {"findings", "findings and impression", "impression", "impressions", "conclusion", "conclusions"}
# an unknown upper-case header name ("CLINICAL QUESTION:"), recognised only outside FINDINGS / IMPRESSION
_CAPS_HEADER = re.compile(r"[A-Z][A-Z0-9 /&()'-]{1,40}")
# an exam title line without a colon: "PA AND LATERAL CHEST RADIOGRAPH", "CHEST (PORTABLE AP)"
_TITLE = re.compile(
    r"(?:(?:PORTABLE|UPRIGHT|SUPINE|SEMI-?UPRIGHT|SEMI-?ERECT|ERECT|FRONTAL|LATERAL|LAT|PA|AP|AND|SINGLE|TWO|"
    r"THREE|VIEWS?|OF|THE|CHEST|RADIOGRAPHS?|X-?RAYS?|FILMS?|STUDY|EXAM(?:INATION)?|CXR|BEDSIDE|DECUBITUS|"
    r"RIGHT|LEFT|OBLIQUE|W/|WITH|ONLY)[ \t,/&():-]*)+")
_TITLE_NOUN = re.compile(r"CHEST|RADIOGRAPH|X-?RAY|FILM|CXR|VIEW")
_INLINE_KEYWORDS = ("FINDINGS", "IMPRESSION", "CONCLUSION")
_INLINE_COLON = re.compile(r"S?[ \t]*:")


def _split_inline_headers(text: str) -> str:
    """"... effusion. IMPRESSION: ..." on one line (the cleaned form itself, JSONL input): a line break before the
    upper-case header when a sentence ends right before it."""
    cuts = []
    for keyword in _INLINE_KEYWORDS:
        at = text.find(keyword, 1)
        while at > 0:
            start = at
            while start > 0 and text[start - 1] in " \t":
                start -= 1
            if start < at and start > 0 and text[start - 1] in ".!?_" and _INLINE_COLON.match(text, at + len(keyword)):
                cuts.append((start, at))
            at = text.find(keyword, at + len(keyword))
    for start, at in sorted(cuts, reverse=True):
        text = text[:start] + "\n" + text[at:]
    return text


def extract_sections(text: str) -> tuple[Sections, int]:
    """Split report text at its headers; keep FINDINGS and IMPRESSION. Returns (sections, sections dropped).

    A metadata section (INDICATION, COMPARISON, an exam title line, an unknown upper-case header, ...) ends at
    its first blank line; untitled text after it is "body", which stands in for FINDINGS when a report has no
    FINDINGS header. FINDINGS and IMPRESSION run to the next header.
    """
    text = _split_inline_headers(text.replace("\r\n", "\n").replace("\r", "\n"))
    kept: dict[str, list[str]] = {"findings": [], "impression": [], "body": []}
    seen = {"findings": False, "impression": False}
    kind, lines, dropped = "body", kept["body"], 0
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            if kind == "meta":
                if lines:  # a metadata paragraph ends; what follows is untitled text
                    kind, lines = "body", kept["body"]
            elif lines and lines[-1]:
                lines.append("")
            continue
        colon = line.find(":")
        header = None  # (kind, the text after the colon)
        if 0 < colon <= _LONGEST_HEADER:
            name = " ".join(line[:colon].lower().split())
            if name in _HEADER_KIND:
                header = _HEADER_KIND[name], line[colon + 1:]
        elif colon < 0 and len(line) <= 25 and (name := " ".join(line.lower().split())) in _BARE_HEADERS:
            header = _HEADER_KIND[name], ""
        if header:
            kind = header[0]
        elif kind in ("findings", "impression") or not line[:colon if colon > 0 else 80].isupper():
            pass  # not a header: titles and unknown headers are upper case, and only looked for outside sections
        elif colon < 0 and _TITLE.fullmatch(line) and _TITLE_NOUN.search(line):
            dropped += 1
            if lines and lines[-1]:
                lines.append("")
            kind, lines = "body", kept["body"]
            continue
        elif (0 < colon <= 42 and not line[colon + 1:colon + 2].isdigit()
              and _CAPS_HEADER.fullmatch(line[:colon].rstrip())):
            kind, header = "meta", ("meta", line[colon + 1:])
        if header:
            if kind == "meta":
                lines = []
            else:
                lines = kept[kind]
                if lines and lines[-1]:
                    lines.append("")
                seen[kind] = True
            if rest := header[1].strip():
                if kind == "meta" and not lines:
                    dropped += 1
                lines.append(rest)
            continue
        if kind == "meta" and not lines:
            dropped += 1
        lines.append(line)

    findings, impression, body = ("\n".join(kept[k]).strip() for k in ("findings", "impression", "body"))
    if body and (findings or (seen["findings"] and impression)):
        dropped += 1  # untitled text next to a FINDINGS section (e.g. a stray paragraph before it)
    elif body:
        findings = body
    found = bool(findings or impression or seen["findings"] or seen["impression"])
    return Sections(findings, impression, found), dropped


# --------------------------------------------------------------------------------------------------------------
# section scope
_NUMBERING_LINE = re.compile(r"[ \t]*\d{1,2}[ \t]*[.)](?=[ \t]+\S)[ \t]*")
_NUMBERING_INLINE = re.compile(r"([.!?])[ \t]+\d{1,2}[.)][ \t]+(?=[A-Za-z_])")
_LINE_NUMBER_HINT = re.compile(r"\n\d")


def _list_numbering(text: str) -> tuple[str, int]:
    n = 0
    if text[:1].isdigit() or ("\n" in text and _LINE_NUMBER_HINT.search(text)):  # section lines come stripped
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line[:1].isdigit() and (m := _NUMBERING_LINE.match(line)):
                lines[i], n = line[m.end():], n + 1
        text = "\n".join(lines)
    if "." in text or ")" in text:
        text, n2 = _NUMBERING_INLINE.subn(r"\1 ", text)
        n += n2
    return text, n


def _whitespace(text: str) -> tuple[str, int]:
    """Count: the line breaks joined, at least 1 when anything changed."""
    new = " ".join(text.split())
    return (text, 0) if new == text else (new, text.count("\n") or 1)


# --------------------------------------------------------------------------------------------------------------
# sentence scope
def _remove_spans(s: str, spans: list[tuple[int, int]]) -> str:
    """`s` without the (sorted, disjoint) spans, each taken with the spaces and the one comma before it."""
    if not spans:
        return s
    out, last = [], 0
    for start, end in spans:
        while start > last and s[start - 1] in " \t":
            start -= 1
        if start > last and s[start - 1] == ",":
            start -= 1
            while start > last and s[start - 1] in " \t":
                start -= 1
        out.append(s[last:start])
        last = end
    out.append(s[last:])
    return "".join(out)


def _clause_or_drop(sentence: str, start: int, restart: re.Pattern | None = None) -> str:
    """Keep the part of `sentence` before the clause that begins at `start` (a comma / semicolon / dash clause);
    return "" when there is no such clause or what is left has no finding (or matches `restart`)."""
    head = sentence[:start]
    cut = max(head.rfind(","), head.rfind(";"), head.rfind(" - "))
    if cut <= 0:
        return ""
    kept = head[:cut].strip()
    if len(_CONTENT_WORD.findall(kept)) < 2 or (restart is not None and restart.match(kept)):
        return ""
    return kept + "."


_COMM_VERB = re.compile(
    r"\b(?:discuss(?:ed|ion)|communicat(?:ed|ion)|convey(?:ed)?|relay(?:ed)?|notif(?:ied|ication)|paged|"
    r"telephoned|called|informed|d/w|reported\s+to|posted\s+to|entered\s+into|sp(?:oke|oken)\s+(?:with|to)|"
    r"reviewed\s+with|left\s+a\s+message)\b", _I)
_COMM_TARGET = re.compile(
    r"\b(?:dr|drs|doctor|nurse|np|rn|physician|clinician|provider|radiologist|resident|fellow|surgeon|intern|"
    r"house\s*officer|team|service|telephone|phone|pager|in\s+person|e-?mail|dashboard|critical\s+results?|"
    r"a\.m|p\.m)\b|\b\d{1,2}:\d{2}\b|" + _BLANK, _I)
_COMM_ONLY = re.compile(r"^(?:these|this|the|above|such|findings?|information|results?|impression|was|were|has|have|"
                        r"been|and|which|a|an|wet|read|critical|preliminary|report)\b", _I)


def _communication(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    m = _COMM_VERB.search(sentence)
    if not m or not _COMM_TARGET.search(sentence):
        return sentence, 0
    return _clause_or_drop(sentence, m.start(), _COMM_ONLY), 1


_PROCEDURE = re.compile(
    r"\b(?:follow[- ]?up|ct|cta|mri?|imaging|radiographs?|films?|stud(?:y|ies)|exam(?:ination)?s?|evaluation|"
    r"views?|correlation|ultrasound|assessment|comparison|repeat|bronchoscopy|x-?rays?|cxr|workup|"
    r"work-up|characterization|inspiration)\b", _I)
_REC_START = re.compile(
    r"^(?:we\s+)?(?:recommend(?:ed|ation|ations)?|suggest(?:ed)?|advise[d]?|consider|please|correlat(?:e|ion)|"
    r"clinical\s+correlation|follow[- ]?up\s+(?:with|by|in|is|are|chest|ct|imaging|radiographs?|studies|study)|"
    r"if\s+(?:clinically|there\s+is|concern|symptoms|the\s+patient)|further\s+(?:evaluation|assessment|imaging)|"
    r"a\s+(?:repeat|follow-up|followup|dedicated|ct|chest\s+ct)|repeat|short[- ]interval)\b", _I)
_REC_ANY = re.compile(
    r"\brecommend(?:ed|s|ation|ations)?\b|\bclinical(?:ly)?\s+correlat\w*|\bcorrelate\s+clinically\b|"
    r"\bcorrelation\s+(?:is|with)\b", _I)
_REC_MODAL = re.compile(
    r"\b(?:is|are|would\s+be|may\s+be|could\s+be|can\s+be|should\s+be|might\s+be|be)\s+"
    r"(?:strongly\s+|also\s+|further\s+|better\s+)?"
    r"(?:suggested|advised|considered|helpful|useful|of\s+value|beneficial|obtained|performed|pursued|warranted|"
    r"indicated|evaluated|assessed|characterized|reassessed)\b", _I)


def _recommendation(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    if _REC_START.match(sentence):
        return "", 1
    m = _REC_ANY.search(sentence)
    if m is None:
        m = _REC_MODAL.search(sentence)
        if m is None or not _PROCEDURE.search(sentence):
            return sentence, 0
    return _clause_or_drop(sentence, m.start(), _REC_START), 1


_VIEW_WORD = (r"(?:the|a|an|single|two|three|portable|upright|semi[- ]?upright|semi[- ]?erect|erect|supine|sitting|"
              r"frontal|lateral|lat|pa|ap|bedside|oblique|decubitus|and|&|chest|ap/lateral|pa/lateral|"
              r"ap/pa|frontal/lateral)")
_VIEW_NOUN = r"(?:views?|radiographs?|films?|images?|x-?rays?|projections?|cxrs?|studies|study|exams?|examinations?)"
_TECH_VIEWS = rf"(?:{_VIEW_WORD}[\s,/&]+)*{_VIEW_NOUN}(?:\s+of\s+the\s+chest)?(?:\s*\([^)]{{0,30}}\))?"
# "Chest radiograph, frontal and lateral views", "PA and lateral views of the chest at ___"
_TECH_HEAD = (rf"(?P<head>{_TECH_VIEWS}(?:\s*,\s*{_TECH_VIEWS})?(?:\s+(?:at|on)\s+" + _DATEISH + r")?)")
_TECH_DROP = re.compile(
    _TECH_HEAD + r"(?:\s+(?:was|were|is|are|has\s+been|have\s+been))?"
    r"(?:\s+(?:obtained|provided|performed|acquired|submitted|presented|reviewed|available|taken|done))?"
    r"(?:\s+(?:at|on)\s+" + _DATEISH + r")*"
    r"(?:\s*,?\s+with\s+(?:the\s+)?patient\s+in\s+[^.]*?position)?\s*[.!]?", _I)
_TECH_LEAD = re.compile(
    _TECH_HEAD + r"(?:\s+(?:again|once\s+again|now))?\s+(?:re)?(?:demonstrates?|demonstrated|shows?|showed|"
    r"reveals?|revealed|depicts?|confirms?|(?:is|are)\s+notable\s+for)\s+(?:that\s+)?(?P<rest>\S.*)", _I)
_TECH_SIGNAL = re.compile(r"\b(?:chest|pa|ap|frontal|lateral|portable|upright|supine|views?|radiographs?|"
                          r"films?|cxrs?|x-?rays?)\b", _I)


def _technique(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    m = _TECH_DROP.fullmatch(sentence)
    if m and _TECH_SIGNAL.search(m.group("head")):
        return "", 1
    m = _TECH_LEAD.fullmatch(sentence)
    if m and _TECH_SIGNAL.search(m.group("head")):
        return m.group("rest"), 1
    return sentence, 0


_CMP_NO_PRIOR = re.compile(
    r"(?:there\s+(?:are|is)\s+)?no\s+(?:prior|previous|old|earlier|outside|comparison)\s+"
    r"(?:images?|studies|study|exams?|examinations?|radiographs?|films?|cxrs?|x-?rays?)"
    r"(?:\s+(?:are|is))?(?:\s+available)?(?:\s+for\s+(?:comparison|review))?\s*[.!]?", _I)
_CMP_LEAD = re.compile(
    r"(?:as\s+|when\s+)?(?:in\s+)?(?:comparison|compared)\s+(?:is\s+made\s+)?(?:with|to)\s+(?:the\s+|a\s+)?"
    rf"(?:(?:{_PRIOR_ADJ}|chest|portable|pa|ap|lateral|and|frontal|upright|supine|single|two)\s+)*"
    rf"(?:{_STUDY_NOUN}|prior|previous|{_BLANK})"
    rf"(?:\s*,?\s*(?:(?:of|from|dated|on|obtained|performed|taken|done|at|through|to|and|since|including|"
    rf"most\s+recently)\s+)*(?:on\s+)?{_DATEISH})*"
    r"(?:\s*\(" + _BLANK + r"\))?(?:\s*,\s*|\s+|\s*$)", _I)
_CMP_LEAD_COMMA = re.compile(r"(?:as\s+|when\s+)?(?:in\s+)?(?:comparison|compared)\s+(?:is\s+made\s+)?(?:with|to)"
                             r"\s+[^,]{0,80},\s*", _I)
_CMP_NO_CHANGE_IN = re.compile(
    r"(?:there\s+(?:is|are|has\s+been|have\s+been)\s+)?(?:(?:only\s+)?(?:little|minimal|no|not\s+much)\s+)"
    r"(?:(?:significant|substantial|appreciable|definite|relevant|interval|overall)\s+)*change\s+(?:in|of)\s+"
    r"(?:the\s+)?(?:(?:appearance|size|extent|degree|position|configuration)\s+of\s+(?:the\s+)?)?(?P<rest>\S.*)",
    _I)
_CMP_TAIL = re.compile(
    r"\b(?:similar\s+to|(?:as\s+|when\s+)?compared\s+(?:with|to)|in\s+comparison\s+(?:with|to)|since|from|relative\s+to|"
    r"versus|vs\.?)\s+(?:the\s+|a\s+)?(?P<tail>(?:" + _PRIOR_ADJ + r"\s+)*(?:chest\s+)?(?:" + _STUDY_NOUN +
    r"|prior|previous)?(?:\s+(?:of|from|dated|on|obtained|performed)\s*)?(?:\s*(?:at\s+|,\s*)?" + _DATEISH + r")*)"
    r"(?=\s*[.,;!]|\s*$)", _I)
_CMP_AS_BEFORE = re.compile(r"\bas\s+(?:(?:seen|noted|described|demonstrated)\s+)?(?:before|previously|"
                            r"on\s+(?:the\s+)?(?:prior|previous|earlier)(?:\s+" + _STUDY_NOUN + r")?)"
                            r"(?=\s*[.,;!]|\s*$)", _I)
_CMP_AGAIN = re.compile(r"^(?:(?:there\s+(?:is|are)\s+)?(?:again|once\s+again)\s+(?:seen|noted|demonstrated|"
                        r"visualized|identified|present)\s+(?:is|are)\s+(?:the\s+)?|redemonstration\s+of\s+"
                        r"(?:the\s+)?|(?:again|once\s+again),\s*|there\s+(?:is|are)\s+(?:again|once\s+again)\s+)",
                        _I)
_CMP_AGAIN_VERB = re.compile(r"\b(?:again|once\s+again)\s+(?=(?:seen|noted|demonstrated|visualized|identified|"
                             r"present|evident)\b)", _I)
_CMP_PREVIOUSLY = re.compile(r"\b(?:previously|formerly)\s+(?:seen|noted|described|demonstrated|identified|"
                             r"reported|visualized|mentioned)\s+(?=\S)", _I)
_CMP_STOPWORDS = _words(
    "there is are has have been no not little minimal only significant substantial appreciable definite relevant "
    "interval overall change changes changed from since compared comparison with to the a an prior previous "
    "preceding recent most earlier last study studies exam exams examination examinations radiograph radiographs "
    "film films cxr chest x-ray x-rays images image one otherwise appearance stable unchanged essentially grossly "
    "largely of in and or day today yesterday dated made pa ap lateral portable same overall as before "
    "previously again similar allowing for differences technique positioning patient including")


_CMP_TAIL_WORDS = _keys("compared comparison since from relative versus vs similar")
_CMP_PRIOR_WORDS = _keys("prior previous preceding earlier recent last yesterday today ___")
_CMP_AS_WORDS = _keys("before previously prior previous earlier")
_CMP_PURE_WORDS = _keys("change changes changed unchanged compare compared comparing comparison comparisons prior "
                         "priors previous previously since")


def _comparison(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    words = tokens(sentence) if words is None else words
    if _CMP_NO_PRIOR.fullmatch(sentence):
        return "", 1
    s = sentence
    m = _CMP_LEAD.match(s) or _CMP_LEAD_COMMA.match(s)
    if m:
        s = s[m.end():]
    m = _CMP_NO_CHANGE_IN.match(s)
    if m:
        s = m.group("rest")
    s = _CMP_AGAIN.sub("", s, count=1)
    if b"again" in words:
        s = _CMP_AGAIN_VERB.sub("", s)
    if b"previously" in words or b"formerly" in words:
        s = _CMP_PREVIOUSLY.sub("", s)
    if b"as" in words and not _CMP_AS_WORDS.isdisjoint(words):
        s = _remove_spans(s, [m.span() for m in _CMP_AS_BEFORE.finditer(s)])
    if not _CMP_TAIL_WORDS.isdisjoint(words) and (not _CMP_PRIOR_WORDS.isdisjoint(words) or "__" in s):
        s = _remove_spans(s, [m.span() for m in _CMP_TAIL.finditer(s) if _PRIOR_WORD.search(m.group("tail").lower())])
    if s == sentence:
        if not _CMP_PURE_WORDS.isdisjoint(words) and _only_comparison_words(s):
            return "", 1
        return sentence, 0
    return ("", 1) if _only_comparison_words(s) else (s.strip(), 1)


def _only_comparison_words(s: str) -> bool:
    return all(w.lower() in _CMP_STOPWORDS for w in _CONTENT_WORD.findall(s))


_FILLER = re.compile(r"^(?:(?:of\s+note|incidentally|please\s+note|as\s+above|it\s+is\s+noted\s+that)\s*,?\s*|"
                     r"(?:incidental\s+)?note\s+is\s+(?:also\s+)?made\s+of\s+(?:the\s+)?|"
                     r"(?:it\s+is\s+)?noted\s+(?:is|are)\s+(?:the\s+)?)", _I)


def _filler_phrases(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    new, n = _FILLER.subn("", sentence, count=1)
    return new, n


_DEID_PAREN = re.compile(r"\(\s*" + _BLANK + r"(?:\s*[,/]?\s*" + _BLANK + r")*\s*\)")
_DEID_BLANK = re.compile(_BLANK)
# the words that carry a blank, right before it ("on ___", "by Dr. ___"), and what may join two blanks
_DEID_CARRIER = re.compile(r"(?:\b(?:on|at|dated|from|since|by|of|in|with|to)\s+(?:(?:dr|drs|mr|mrs|ms)\.?\s+)?|"
                           r"\b(?:dr|drs|mr|mrs|ms)\.?\s+)$", _I)
_DEID_JOINER = re.compile(r"\s*(?:at|,|and|/)?\s*", _I)


def _deidentification(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    if "__" not in sentence:
        return sentence, 0
    s = sentence
    spans: list[tuple[int, int]] = [m.span() for m in _DEID_PAREN.finditer(s)] if "(" in s else []
    n = len(spans)
    if spans:
        s, spans = _remove_spans(s, spans), []
    for m in _DEID_BLANK.finditer(s):
        start = m.start()
        if spans and _DEID_JOINER.fullmatch(s, spans[-1][1], start):
            start = spans.pop()[0]  # "___ at ___", "___, ___": one span
        elif carrier := _DEID_CARRIER.search(s, max(0, start - 16), start):
            start = carrier.start()
        spans.append((start, m.end()))
        n += 1
    return _remove_spans(s, spans).strip(), n


_PUNCT_FIXES = (
    (re.compile(r"\s+(?=[,.;:!?)])"), ""),
    (re.compile(r"(?<=\()\s+"), ""),
    (re.compile(r"\(\s*\)"), ""),
    (re.compile(r"([,;:])(?:\s*[,;:])+"), r"\1"),
    (re.compile(r"[,;:]+\s*(?=[.!?]$)"), ""),
    (re.compile(r"\.{2,}$"), "."),
    (re.compile(r"[ \t]{2,}"), " "),
    (re.compile(r"^[\s,;:.)\-]+"), ""),
    (re.compile(r"[\s,;:\-(]+$"), ""),
)
_END = re.compile(r"[.!?]$")
_PUNCT_BAD = re.compile(r" [ ,.;:!?)]|\([ )]|[,;:][,;:.!?]|\.\.|\t")  # what one of _PUNCT_FIXES would change


def _punctuation(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    if (sentence[-1:] in (".", "!", "?") and sentence[0] not in " ,;:.)-" and not _PUNCT_BAD.search(sentence)
            and _CONTENT_WORD.search(sentence)):
        return sentence, 0
    s = sentence
    for pattern, repl in _PUNCT_FIXES:
        s = pattern.sub(repl, s)
    if s and not _END.search(s):
        s += "."
    if not _CONTENT_WORD.search(s):
        s = ""
    return s, int(s != sentence)


_ACRONYMS = _words(
    "ap pa ct cta mri mr et ett ng ngt og ogt picc ij svc ivc icd aicd cabg copd chf icu ed cxr peg tips ekg ecg "
    "ra rv lv la lul lll rul rll rml iabp ecmo vats ards hiv tb pe dvt cva ue le us ir iv pna cp ptx nos vp rij "
    "lij")
_WORD = re.compile(r"[A-Za-z]+")
_VERTEBRA = re.compile(r"\b([tlc])(\d{1,2})\b")


def _sentence_case(sentence: str, words: frozenset[bytes] | None = None) -> tuple[str, int]:
    s = sentence
    if s.isupper() and sum(map(str.isalpha, s)) >= 4:  # an all-capitals sentence
        s = _WORD.sub(lambda m: m.group(0) if m.group(0).lower() in _ACRONYMS else m.group(0).lower(), s)
        s = _VERTEBRA.sub(lambda m: m.group(1).upper() + m.group(2), s)
    for i, c in enumerate(s):
        if c.isalpha():
            if c.islower():
                s = s[:i] + c.upper() + s[i + 1:]
            break
        if c.isdigit():
            break
    return s, int(s != sentence)


# --------------------------------------------------------------------------------------------------------------
RULES: tuple[Rule, ...] = (
    Rule("report_banner", "document", "drop the `FINAL REPORT` banner and anything above it (e.g. wet reads)",
         ("WET READ: ...\n FINAL REPORT\n FINDINGS: ...", " FINDINGS: ..."), _report_banner),
    Rule("sections", "sections",
         "keep FINDINGS and IMPRESSION (header variants, wrapped lines); drop EXAMINATION, INDICATION, HISTORY, "
         "TECHNIQUE, COMPARISON, NOTIFICATION, ... and exam titles; untitled text stands in for FINDINGS",
         ("INDICATION: ___ with cough.\n\nCOMPARISON: ___\n\nFINDINGS: Lungs are clear.",
          "FINDINGS: Lungs are clear."), extract_sections),
    Rule("list_numbering", "section", "drop list numbers (`1.`, `2)`) in front of items",
         ("1. Mild edema.\n2. Small effusions.", "Mild edema.\nSmall effusions."), _list_numbering),
    Rule("whitespace", "section", "join wrapped lines, single spaces",
         ("The lungs are\n clear.  No effusion.", "The lungs are clear. No effusion."), _whitespace),
    Rule("communication", "sentence", "drop communication / notification sentences (or their trailing clause)",
         ("These findings were discussed with Dr. ___ by telephone at 8:45 on ___.", ""), _communication,
         _keys("discussed discussion communicated communication convey conveyed relay relayed notified notification "
                "paged telephoned called informed d reported posted entered spoke spoken reviewed message")),
    Rule("recommendation", "sentence", "drop recommendations (or their trailing clause)",
         ("Recommend follow-up CT in 3 months.", ""), _recommendation,
         _keys("recommend recommended recommends recommendation recommendations suggest suggested advise advised "
                "consider considered please correlate correlated correlates correlation correlating clinical "
                "clinically follow followup if further repeat dedicated ct short helpful useful value beneficial "
                "obtained performed pursued warranted indicated evaluated assessed characterized reassessed")),
    Rule("technique", "sentence", "drop technique / view statements; keep the finding they introduce",
         ("Chest PA and lateral radiographs redemonstrate mild cardiomegaly.", "mild cardiomegaly."), _technique,
         _keys("chest pa ap frontal lateral portable upright supine view views radiograph radiographs film films "
                "cxr cxrs x xray xrays")),
    Rule("comparison", "sentence", "remove comparisons with prior studies, keeping the finding; drop sentences "
         "that only compare (temporal adjectives such as 'unchanged' and 'stable' stay)",
         ("In comparison with the study of ___, there is little change in the moderate cardiomegaly.",
          "moderate cardiomegaly."), _comparison,
         _keys("compare compared comparing comparison comparisons prior priors previous previously formerly "
                "preceding since change changes changed unchanged redemonstrate redemonstrated redemonstrates "
                "redemonstrating redemonstration again before earlier stable interval recent recently last yesterday "
                "today old outside ___")),
    Rule("filler_phrases", "sentence", "drop conversational fillers ('Note is made of', 'Of note,')",
         ("Note is made of a small hiatal hernia.", "a small hiatal hernia."), _filler_phrases,
         _keys("note noted incidentally above")),
    Rule("deidentification", "sentence", "remove `___` blanks with the phrase that carries them",
         ("A right ___ catheter ends in the SVC (___), placed on ___.", "A right catheter ends in the SVC, placed."),
         _deidentification),
    Rule("punctuation", "sentence", "tidy spaces around punctuation, stray commas, final period",
         ("Heart size is normal , no effusion", "Heart size is normal, no effusion."), _punctuation),
    Rule("sentence_case", "sentence", "capitalise the first letter; all-capitals sentences to sentence case",
         ("THE LUNGS ARE CLEAR. NO PTX.", "The lungs are clear. No PTX."), _sentence_case),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
assert [SCOPE_ORDER.index(r.scope) for r in RULES] == sorted(SCOPE_ORDER.index(r.scope) for r in RULES)
assert sum(r.scope == "sections" for r in RULES) == 1
_DOCUMENT = tuple(r for r in RULES if r.scope == "document")
_SECTIONS = next(r for r in RULES if r.scope == "sections")
_SECTION = tuple(r for r in RULES if r.scope == "section")
_SENTENCE = tuple(r for r in RULES if r.scope == "sentence")
_ANY_TRIGGER = frozenset().union(*(r.trigger for r in _SENTENCE if r.trigger is not None))
_SENTENCE_STEPS = tuple((r.name, r.trigger, r.apply) for r in _SENTENCE)  # the loop below without attribute lookups

_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ABBREV_ALWAYS = _words("dr. drs. mr. mrs. ms. vs. approx. e.g. i.e. cf. st.")  # never end a sentence
_ABBREV_LOWER = _words("a.m. p.m.")  # and single letters ("x."): end one unless a lower-case word follows


def split_sentences(text: str) -> list[str]:
    """Sentences of one section's text; abbreviations such as `Dr.` and `e.g.` do not end one."""
    if "!" in text or "?" in text or "\n" in text or "\t" in text or ".  " in text:
        pieces = _SPLIT.split(text)
    else:  # the common case after the `whitespace` rule: single spaces, periods only
        pieces = [p + "." for p in text.split(". ")]
        pieces[-1] = pieces[-1][:-1]
    out: list[str] = []
    for piece in pieces:
        if out and len(tail := out[-1][out[-1].rfind(" ") + 1:].lstrip("(").lower()) <= 7 and (
                tail in _ABBREV_ALWAYS
                or (piece[:1].islower() and (tail in _ABBREV_LOWER or (len(tail) == 2 and tail[0].isalpha())))):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [p for p in out if p]


def _clean_section(text: str, counts: dict[str, int]) -> str:
    for rule in _SECTION:
        text, n = rule.apply(text)
        if n:
            counts[rule.name] = counts.get(rule.name, 0) + n
    kept = []
    for sentence in split_sentences(text):
        words: frozenset[bytes] | None = None  # the sentence's tokens, computed when a rule with a trigger needs them
        for name, trigger, apply in _SENTENCE_STEPS:
            if trigger is not None:
                if words is None:
                    words = tokens(sentence)
                    any_trigger = not _ANY_TRIGGER.isdisjoint(words)
                if not any_trigger or trigger.isdisjoint(words):
                    continue
            new, n = apply(sentence, words)
            if n:
                counts[name] = counts.get(name, 0) + n
            if not new:
                break
            if new != sentence:
                sentence, words = new, None
        else:
            kept.append(sentence)
    return " ".join(kept)


def clean_report(text: str) -> CleanResult:
    """Clean one raw report with the rule table (deterministic, offline). See the module docstring."""
    counts: dict[str, int] = {}

    def ordered() -> dict[str, int]:
        return {name: counts[name] for name in RULE_NAMES if counts.get(name)}

    if not text or not text.strip():
        return CleanResult(None, {}, DROP_EMPTY)
    for rule in _DOCUMENT:
        text, n = rule.apply(text)
        if n:
            counts[rule.name] = counts.get(rule.name, 0) + n
    sections, n = _SECTIONS.apply(text)
    if n:
        counts[_SECTIONS.name] = n
    if not sections.found:
        return CleanResult(None, ordered(), DROP_NO_SECTION)
    findings = _clean_section(sections.findings, counts) if sections.findings else ""
    impression = _clean_section(sections.impression, counts) if sections.impression else ""
    if findings and impression:
        report = f"FINDINGS: {findings} IMPRESSION: {impression}"
    elif findings or impression:
        report = f"FINDINGS: {findings}" if findings else f"IMPRESSION: {impression}"
    else:
        return CleanResult(None, ordered(), DROP_NOTHING_LEFT)
    return CleanResult(report, ordered(), None)


# --------------------------------------------------------------------------------------------------------------
# optional LLM backend
CLEAN_PROMPT = """You clean chest X-ray radiology reports for training a report-generation model.
Rewrite the report you are given as one line in exactly this form:
FINDINGS: <findings> IMPRESSION: <impression>
Keep every finding of the report, positive and negative, with its meaning, side, size and severity; add nothing.
Write each finding as a standalone present-tense sentence. Remove comparisons with prior studies but keep the
finding itself ("little change in the moderate cardiomegaly" -> "Moderate cardiomegaly."); remove de-identification
blanks (___), technique and view statements, communication and notification statements, recommendations,
indication and history. Leave out " IMPRESSION: ..." when the report has no impression. Answer with the cleaned
report only."""

SELF_CHECK_PROMPT = """You check a cleaned chest X-ray report against the original report.
Answer "yes" if the cleaned report keeps every finding of the original (positive and negative, with side, size and
severity) and adds no finding that is not in the original; removing comparisons with prior studies, technique,
communication statements and recommendations is expected and is not an error. Otherwise answer "no".
Answer with one word, yes or no, optionally followed by one short sentence of reason."""

LLM_REWRITE = "llm_rewrite"
LLM_SELF_CHECK_REJECTED = "llm_self_check_rejected"
LLM_ERROR = "llm_error"
_CLEANED_FORM = re.compile(r"(?:FINDINGS:\s*\S.*?(?:\s+IMPRESSION:\s*\S.*)?|IMPRESSION:\s*\S.*)", re.DOTALL)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models' preamble


class LLMError(RuntimeError):
    """The endpoint answered something unusable for this report (a rewrite not in the FINDINGS/IMPRESSION form)."""


class LLMUnavailable(OSError):
    """The endpoint does not work: it cannot be reached, times out, answers an HTTP error or a redirect, or its
    answer is not a chat-completions answer. Without ``fallback`` this stops a `data clean` run (exit status 2,
    progress kept for a rerun); with it, the report gets the rule-based result (``llm_error``)."""


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would send the Authorization header (the API key) on to the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib calls it so
        return None  # urllib then raises HTTPError with the 3xx code


class LLMRewriter:
    """Rewrites reports through an OpenAI-compatible `POST {base_url}/chat/completions` endpoint, then runs the
    self-check pass; falls back to the rule-based result on rejection or an unusable rewrite (recorded in
    `changes`).

    The endpoint must be https, or plain http to a loopback host (``localhost``, 127.0.0.0/8, ::1); plain http to
    any other host (the reports and the API key would cross the network unencrypted) needs ``allow_http=True``.
    Redirects are never followed (the API key would go along to the new location). When the endpoint itself
    fails (`LLMUnavailable`), `clean` raises unless ``fallback=True``, which gives the rule-based result instead
    and counts the report in `endpoint_failures`.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, temperature: float = 0.0, max_tokens: int = 1024, *,
                 allow_http: bool = False, fallback: bool = False) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"--llm-endpoint must be an http(s) URL, got {parts.scheme or 'no'} scheme")
        if parts.username is not None or parts.password is not None:
            raise ValueError("--llm-endpoint must not hold a user name or password; put the API key in the "
                             "environment variable named by --llm-api-key-env")
        if not parts.hostname:
            raise ValueError(f"--llm-endpoint {base_url} names no host")
        if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
            raise ValueError(f"--llm-endpoint {base_url}: plain http to {parts.hostname}, which is not a loopback "
                             "address, would send the reports and the API key unencrypted; use https, or pass "
                             "--llm-allow-http")
        if not model:
            raise ValueError("an LLM model name is required (--llm-model)")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.timeout, self.temperature, self.max_tokens = model, timeout, temperature, max_tokens
        self.fallback = fallback
        self.endpoint_failures = 0  # reports that got the rule-based result because the endpoint failed
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        self._opener = urllib.request.build_opener(_RefuseRedirects)  # proxies from the environment as it is now

    def chat(self, system: str, user: str) -> str:
        """One chat-completions call; returns the first choice's message content. LLMUnavailable when the
        endpoint fails."""
        body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                raise LLMUnavailable(f"{self.url} answered HTTP {err.code}, a redirect to "
                                     f"{err.headers.get('Location', '(no location)')}: redirects are not followed "
                                     "(the API key would go along); give the final URL as --llm-endpoint") from None
            try:
                detail = " ".join(err.read(200).decode("utf-8", "replace").split())
            except OSError:
                detail = ""
            raise LLMUnavailable(f"HTTP {err.code} from {self.url}" + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise LLMUnavailable(f"cannot reach the LLM endpoint {self.url}: {getattr(err, 'reason', err)}") from None
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as err:
            raise LLMUnavailable(f"{self.url} did not give a chat-completions answer ({type(err).__name__})") from None
        if not isinstance(content, str):
            raise LLMUnavailable(f"{self.url} did not give a chat-completions answer (message content is "
                                 f"{type(content).__name__})")
        return _THINK.sub("", content).strip()

    def rewrite(self, text: str) -> str:
        """The model's cleaned report, checked for the `FINDINGS: ... IMPRESSION: ...` form."""
        answer = " ".join(_FENCE.sub("", self.chat(CLEAN_PROMPT, text)).split())
        if not _CLEANED_FORM.fullmatch(answer):
            raise LLMError(f"the rewrite ({len(answer)} characters) is not in the FINDINGS/IMPRESSION form")
        return answer

    def self_check(self, original: str, rewritten: str) -> tuple[bool, str]:
        """(accepted, the model's answer): accepted only when the answer starts with "yes"."""
        answer = self.chat(SELF_CHECK_PROMPT, f"ORIGINAL REPORT:\n{original}\n\nCLEANED REPORT:\n{rewritten}")
        first = re.search(r"[A-Za-z]+", answer)
        return bool(first and first.group(0).lower() == "yes"), answer

    def clean(self, text: str) -> CleanResult:
        """Rule-based cleaning first (it decides what is dropped), then the LLM rewrite and its self-check."""
        base = clean_report(text)
        if base.report is None:
            return base
        try:
            rewritten = self.rewrite(text)
            accepted, answer = self.self_check(text, rewritten)
        except LLMUnavailable as err:
            if not self.fallback:
                raise
            self.endpoint_failures += 1
            log.warning("LLM endpoint failed: %s; using the rule-based result (fallback)", err)
            return CleanResult(base.report, {**base.changes, LLM_ERROR: 1}, None)
        except LLMError as err:
            log.warning("LLM backend: %s; using the rule-based result", err)
            return CleanResult(base.report, {**base.changes, LLM_ERROR: 1}, None)
        if not accepted:
            log.debug("LLM self-check rejected the rewrite (%s); using the rule-based result", answer[:80])
            return CleanResult(base.report, {**base.changes, LLM_SELF_CHECK_REJECTED: 1}, None)
        return CleanResult(rewritten, {LLM_REWRITE: 1}, None)
