"""Text people typed: refused at the boundary when it hides control characters, and made
visible (never interpreted) wherever it is written back out.

A visitor's name travels from a phone's form to the admin's terminal, a CSV the DPO opens in
a spreadsheet and the audit log. Control characters along that way can rewrite a terminal
(ESC, the 8-bit CSI U+009B), reorder what a reader sees (bidi overrides, U+202E "RLO") or cut a
string short (NUL). The portal, the CLI and the service functions that store names call
`check_text`; output that may carry older or network-sourced text (a RADIUS User-Name) goes
through `visible` or `json_visible`.
"""

from __future__ import annotations

import re

from service.errors import Invalid

__all__ = [
    "FORMULA_STARTS",
    "check_text",
    "find_control",
    "json_visible",
    "spreadsheet_cell",
    "strip_controls",
    "visible",
]

# C0 controls and DEL, C1 controls, the line/paragraph separators, the bidi embeddings,
# overrides and isolates (Trojan Source, CVE-2021-42574) and lone surrogates. Not the
# zero-width joiner or the left-to-right/right-to-left marks: names in many scripts need them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# The same, less tab and newline: the layout characters of multi-line text and of JSON.
_CONTROL_BUT_LAYOUT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

# OWASP "CSV injection": a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def find_control(value: str, *, multiline: bool = False) -> str | None:
    """The first control character in `value` (tab and newline allowed if `multiline`)."""
    match = (_CONTROL_BUT_LAYOUT if multiline else _CONTROL).search(value)
    return None if match is None else match.group()


def check_text(value: str, *, field: str, multiline: bool = False) -> str:
    """`value` unchanged, or `Invalid` naming the field and the character (as U+XXXX).

    Refused rather than stripped: what is stored is exactly what the person typed, and a
    person who pasted an invisible character is told so.
    """
    char = find_control(value, multiline=multiline)
    if char is not None:
        raise Invalid(
            f"{field} contains a control character (U+{ord(char):04X}); type it again without it"
        )
    return value


def strip_controls(value: str) -> str:
    """`value` without control characters: for text nobody typed and nobody can retype,
    such as a browser's User-Agent header."""
    return _CONTROL.sub("", value)


def visible(value: str) -> str:
    """`value` with each control character shown as a Python-style escape (`\\x1b`,
    `\\u202e`); tab and newline kept. For terminals and CSV cells."""
    if _CONTROL_BUT_LAYOUT.search(value) is None:  # the usual case: one scan, no copy
        return value
    return _CONTROL_BUT_LAYOUT.sub(lambda m: _escape(m.group()), value)


def json_visible(text: str) -> str:
    """JSON text with the control characters `json.dumps(ensure_ascii=False)` leaves raw
    (C1, bidi, separators) written as `\\uXXXX` escapes: the same data, safe to print."""
    if _CONTROL_BUT_LAYOUT.search(text) is None:
        return text
    # json.dumps escapes tab and newline inside strings: any left are the indentation's.
    return _CONTROL_BUT_LAYOUT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def spreadsheet_cell(value: str) -> str:
    """A text cell a spreadsheet shows as text: control characters made visible, and a
    single quote before a leading `=`, `+`, `-`, `@`, tab or carriage return (OWASP)."""
    value = visible(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value
