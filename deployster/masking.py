"""Secrets out of logs (docs/runner.md#secrets): mask them before the log stream
sees them.

A job's output goes through a ``Masker`` on its way to the ``LogWriter``, so the
Redis stream, the SQL history and every reader only ever hold ``***`` where a
secret was. The secrets of a job are the values of every environment variable of
every stage of its project, the admin token (``DEPLOYSTER_TOKEN``), and — by
shape, since only their hash is stored — any project token (``dps_`` + 40 base62
characters, ``access.TOKEN_PATTERN``).

Each secret value is looked for in the forms a command is likely to print it in:

* as is, and JSON-escaped (``json.dumps``, ASCII-only and not);
* URL-encoded: ``quote``, ``quote(safe="")``, ``quote_plus`` (and lowercase hex);
* shell-quoted: ``shlex.quote``, inside double quotes (``\\ " $ `` ` escaped) and
  bash's ``printf %q``;
* base64, standard and URL-safe alphabets, at each of the three byte alignments,
  so it is found inside a longer blob too (``base64("user:" + value)``): the
  characters that only the value's bits determine, then the optional character
  it shares with what follows and any ``=`` padding;
* with its control characters escaped, as a command's header line shows it
  (``printable.command_header``), for a value that holds any.

Wrapped base64: encoders break long blobs into lines (``base64`` at 76 columns,
``openssl base64`` and PEM at 64), so an encoded secret may be split across a
line break at any offset — ``(printf %050d 0; printf %s "$SECRET") | base64``.
A line break (``\n``, ``\r\n`` or ``\r``) that ends a run of at least
``B64_WRAP_MIN`` (64) base64 characters is taken out before searching, so the
blob is searched as one line; a match across it is masked line by line, one
``***`` on each side, the line break kept.

A project token is found as is (its alphabet is URL- and shell-safe, so quoting
leaves it unchanged) and in base64 by patterns derived the same way, with a
character class where the token's bytes vary (any of the 62 base62 bytes).

Values shorter than ``MIN_SECRET_LEN`` (4) characters are not masked: hiding
every ``1`` or ``on`` would wreck the log and protect nothing. Every other value is
treated as a secret, even one that is not (``production`` is masked too).

Streaming: ``feed(text)`` returns what is safe to emit now and holds back only a
tail that could be the start of a secret (a proper prefix of some form, or the
part of a match that could still grow), so ordinary output is not delayed while
a secret split across two chunks, or across a wrapped line, is still caught;
``finish()`` releases the rest. No form holds a newline (values cannot), so
nothing before the last newline of a chunk is held — unless that newline ends a
run of ``B64_WRAP_MIN`` base64 characters: whether such a line goes on as a blob
is known only from the next one, so its last characters that could begin a
form are held, with the line break, until the next chunk (or ``finish()``).
Never more is held than the longest form and the line breaks within it; the
masker remembers how many base64 characters it emitted last, so a wrap right
after what it emitted is still seen. Matches are found with one compiled
alternation (longest form first, so the longest match at a position wins);
overlapping matches merge into one ``***``, adjacent ones give one ``***`` each.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import shlex
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import quote, quote_plus

from .access import TOKEN_BODY_LEN, TOKEN_PREFIX
from .logstream import LastBatch, LogWriter
from .models import Project, Stage
from .printable import escape_controls, find_control

MASK = "***"
MIN_SECRET_LEN = 4
# Wrapped base64: a line break after at least this many characters of a base64
# alphabet is taken to be one an encoder put inside a blob (base64 wraps at 76
# columns, openssl base64 and PEM at 64), and the blob is searched as one line.
B64_WRAP_MIN = 64
# How many leading characters index the literal forms for the hold-back check.
_HEAD = 8

_STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_URLSAFE = _STD[:62] + "-_"
_B64_CHARS = frozenset(_STD + "-_")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]*")
# A wrap: a run of B64_WRAP_MIN or more base64 characters (matched from its
# start, possessively: each run is scanned once), then "\r\n", "\n" or "\r".
_WRAP = re.compile(rf"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{{{B64_WRAP_MIN},}}+(\r\n|\n|\r)")
_BREAK = re.compile(r"\r\n|\n|\r")
_BREAK_SPLIT = re.compile(r"(\r\n|\n|\r)")
_BASE62 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ANY_BYTE = frozenset(range(256))
# Characters bash's ``printf %q`` backslash-escapes (bash 5: lib/sh/shquote.c).
_BASH_Q = frozenset(" \t\n'\"\\|&;()<>!{}*[]?^$`,")


class LogSink(Protocol):
    """What the runner writes a job's output to (a ``LogWriter`` or ``MaskingWriter``)."""

    def write(self, text: str) -> None: ...

    def write_bytes(self, data: bytes) -> None: ...

    def note(self, text: str) -> None:
        """One of deployster's own lines, on a line of its own."""
        ...

    def close_with(self, text: str) -> None:
        """The last line, written at close whatever the cap."""
        ...


@dataclass(frozen=True)
class Form:
    """One shape a secret can take in the output.

    ``classes`` are the characters possible at each position (one character
    each for a literal). ``tail``, for base64 forms: the characters possible in
    the one after, which the secret shares with what follows; it and ``=``
    padding are masked too when present.
    """

    classes: tuple[frozenset[str], ...]
    tail: frozenset[str] | None = None

    @property
    def literal(self) -> str | None:
        if all(len(c) == 1 for c in self.classes):
            return "".join(next(iter(c)) for c in self.classes)
        return None

    @property
    def max_len(self) -> int:
        return len(self.classes) + (3 if self.tail else 0)


def _literal(text: str) -> Form:
    return Form(tuple(frozenset(c) for c in text))


@functools.lru_cache(maxsize=4096)
def _char_class(chars: frozenset[str]) -> str:
    if len(chars) == 1:
        return re.escape(next(iter(chars)))
    points = sorted(ord(c) for c in chars)
    parts = []
    i = 0
    while i < len(points):  # runs as ranges: [0-9A-Za-z], not 62 characters
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        lo, hi = re.escape(chr(points[i])), re.escape(chr(points[j]))
        parts.append(lo if i == j else f"{lo}{hi}" if j == i + 1 else f"{lo}-{hi}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def _regex(classes: Sequence[frozenset[str]]) -> str:
    """The classes as a regex; repeats (a run, or base64's 4-character period)
    as ``{n}``. The first class stays on its own: an alternation whose branches
    all start with a literal lets ``re`` skip ahead to their first characters."""
    if all(len(c) == 1 for c in classes):
        return re.escape("".join(next(iter(c)) for c in classes))
    out = [_char_class(classes[0])]
    i, n = 1, len(classes)
    while i < n:
        best_p, best_k = 1, 1
        for p in (1, 2, 3, 4):
            k = 1
            block = classes[i : i + p]
            while i + (k + 1) * p <= n and classes[i + k * p : i + (k + 1) * p] == block:
                k += 1
            if k > 1 and k * p > best_k * best_p:
                best_p, best_k = p, k
        unit = "".join(_char_class(c) for c in classes[i : i + best_p])
        if best_k == 1:
            out.append(unit)
        elif best_p == 1:
            out.append(f"{unit}{{{best_k}}}")
        else:
            out.append(f"(?:{unit}){{{best_k}}}")
        i += best_p * best_k
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _form_regex(form: Form) -> str:
    rx = _regex(form.classes)
    if form.tail:
        rx += f"(?:{_char_class(form.tail)}={{0,2}})?"
    return rx


# ------------------------------------------------------------------ base64


def _b64_forms(byte_sets: Sequence[frozenset[int]], alphabet: str) -> list[Form]:
    """The secret's base64 at each of the 3 byte alignments inside a longer blob.

    ``byte_sets[k]``: the values byte ``k`` of the secret can take. At alignment
    ``a`` the secret starts ``a`` bytes into a 3-byte group; the characters whose
    6 bits all come from the secret make the form (a class where those bits
    vary), the character straddling its end is the form's tail. The character
    straddling its start also holds bits of the byte before, and only the top 2
    or 4 bits of the secret's first byte: it is left out.
    """
    n = len(byte_sets)
    forms = []
    for a in range(3):
        start_bit, end_bit = 8 * a, 8 * (a + n)
        first, last = -(-start_bit // 6), end_bit // 6

        def char_values(i: int, a: int = a) -> frozenset[int]:
            values = {0}
            for k in range((6 * i) // 8, (6 * i + 5) // 8 + 1):
                lo, hi = max(6 * i, 8 * k), min(6 * i + 6, 8 * k + 8)
                if lo >= hi:
                    continue
                byte_set = byte_sets[k - a] if 0 <= k - a < n else _ANY_BYTE
                mask, shift_out, shift_in = (1 << (hi - lo)) - 1, 8 * k + 8 - hi, 6 * i + 6 - hi
                parts = {((b >> shift_out) & mask) << shift_in for b in byte_set}
                values = {v | p for v in values for p in parts}
            return frozenset(values)

        classes = tuple(
            frozenset(alphabet[v] for v in char_values(i)) for i in range(first, last)
        )
        tail = None
        if end_bit % 6:
            # In either alphabet: the standard and URL-safe forms of a value share
            # their characters when it encodes to no "+" or "/", and the first of
            # them in the alternation wins, so its tail must take both ("_4=").
            tail = frozenset(c for v in char_values(last) for c in (_STD[v], _URLSAFE[v]))
        if classes:
            forms.append(Form(classes, tail))
    return forms


# ------------------------------------------------------------------ forms


def _bash_printf_q(value: str) -> str:
    out = []
    for i, c in enumerate(value):
        if c in _BASH_Q or (c == "#" and i == 0) or (
            c == "~" and (i == 0 or value[i - 1] in "=:")
        ):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def value_forms(value: str) -> list[Form]:
    """Every form ``value`` is masked in (see the module docstring)."""
    literals = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        shlex.quote(value),
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`"),
        _bash_printf_q(value),
    }
    for encoded in (quote(value), quote(value, safe=""), quote_plus(value)):
        literals.add(encoded)
        literals.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded))
    if find_control(value):  # as a command's header line shows it (printable.py)
        literals.add(escape_controls(value))
    raw = value.encode("utf-8", "surrogatepass")
    forms = [_literal(text) for text in literals if text]
    byte_sets = [frozenset((b,)) for b in raw]
    for alphabet in (_STD, _URLSAFE):
        forms.extend(_b64_forms(byte_sets, alphabet))
    return forms


@functools.lru_cache(maxsize=1)
def token_forms() -> list[Form]:
    """A project token's shape: as is, and in base64 at every alignment."""
    prefix = [frozenset((b,)) for b in TOKEN_PREFIX.encode("ascii")]
    byte_sets = prefix + [_BASE62] * TOKEN_BODY_LEN
    alnum = frozenset(chr(b) for b in _BASE62)
    forms = [Form(tuple(frozenset(c) for c in TOKEN_PREFIX) + (alnum,) * TOKEN_BODY_LEN)]
    for alphabet in (_STD, _URLSAFE):
        forms.extend(_b64_forms(byte_sets, alphabet))
    return forms


@dataclass(frozen=True)
class _Compiled:
    pattern: re.Pattern[str]
    # The literal forms by their first (up to) _HEAD characters: (form, the
    # length of its longest proper prefix) for every head of a proper prefix.
    heads: dict[str, tuple[tuple[str, int], ...]]
    # The other forms (a project token's shapes): their classes, and the longest
    # proper prefix a held-back tail can be.
    partial: tuple[tuple[tuple[frozenset[str], ...], int], ...]
    first_chars: frozenset[str]
    max_len: int
    newline_free: bool


@functools.lru_cache(maxsize=128)
def _compile(values: tuple[str, ...]) -> _Compiled:
    forms: dict[Form, None] = dict.fromkeys(token_forms())
    for value in values:
        forms.update(dict.fromkeys(value_forms(value)))
    # Longest first: at one position the alternation takes the first that matches.
    ordered = sorted(forms, key=lambda f: (-f.max_len, _form_regex(f)))
    pattern = re.compile("|".join(_form_regex(f) for f in ordered))
    heads: dict[str, dict[tuple[str, int], None]] = {}
    partials: list[tuple[tuple[frozenset[str], ...], int]] = []
    for form in ordered:
        text = form.literal
        if text is not None:
            limit = len(text) if form.tail else len(text) - 1
            for i in range(1, min(limit, _HEAD) + 1):
                heads.setdefault(text[:i], {})[(text, limit)] = None
        else:
            size = len(form.classes)
            partials.append((form.classes, size if form.tail else size - 1))
    first_chars = frozenset().union(*(f.classes[0] for f in ordered))
    newline_free = not any("\n" in c or "\r" in c for f in ordered for c in f.classes)
    return _Compiled(
        pattern=pattern,
        heads={head: tuple(found) for head, found in heads.items()},
        partial=tuple(partials),
        first_chars=first_chars,
        max_len=max(f.max_len for f in ordered),
        newline_free=newline_free,
    )


# ------------------------------------------------------------------ masker


@dataclass(frozen=True)
class _Unwrapped:
    """A text with the line breaks inside wrapped base64 taken out (``text``),
    and the way back to the original's positions."""

    text: str
    at: tuple[int, ...]  # where in ``text`` each removed break was
    removed: tuple[int, ...]  # characters removed up to and including each break

    def orig(self, pos: int) -> int:
        """The original position of ``text[pos]``."""
        k = bisect_right(self.at, pos)
        return pos + (self.removed[k - 1] if k else 0)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """A span of ``text`` in the original: the same characters, and the
        breaks between them."""
        return self.orig(start), self.orig(end - 1) + 1

    def cut(self, pos: int, size: int) -> int:
        """The original position of a cut before ``text[pos]`` (``size``: the
        original's length, for a cut at the end)."""
        return size if pos >= len(self.text) else self.orig(pos)

    def joined(self, pos: int) -> int:
        """How many characters of ``text`` come before original position ``pos``."""
        k = 0
        while k < len(self.at) and self.at[k] + (self.removed[k - 1] if k else 0) < pos:
            k += 1
        return pos - (self.removed[k - 1] if k else 0)


def _unwrap(text: str, run_before: int) -> _Unwrapped | None:
    """``text`` with its base64 wrap breaks taken out; None when it has none.

    ``run_before``: how many base64 characters came just before ``text`` in the
    stream (emitted already), so a wrap right at its start is still seen.
    """
    head = _B64_RUN.match(text).end()  # type: ignore[union-attr]
    breaks: list[tuple[int, int]] = []
    if run_before + head >= B64_WRAP_MIN and (first := _BREAK.match(text, head)) is not None:
        breaks.append((head, first.end() - head))
    # Most output has no line that long: a split is cheaper than the regex.
    if len(text) - head > B64_WRAP_MIN and max(map(len, text.split("\n"))) >= B64_WRAP_MIN:
        breaks.extend((m.start(1), m.end(1) - m.start(1)) for m in _WRAP.finditer(text, head))
    if not breaks:
        return None
    parts, at, removed = [], [], []
    pos = total = 0
    for start, length in breaks:
        parts.append(text[pos:start])
        at.append(start - total)
        total += length
        removed.append(total)
        pos = start + length
    parts.append(text[pos:])
    return _Unwrapped("".join(parts), tuple(at), tuple(removed))


def _masked(segment: str, first_out: bool) -> str:
    """A matched segment as ``***``: one per line of a wrapped blob, its line
    breaks kept; ``first_out``: the first line's ``***`` was emitted already."""
    if "\n" not in segment and "\r" not in segment:
        return "" if first_out else MASK
    out = []
    for i, part in enumerate(_BREAK_SPLIT.split(segment)):
        if i % 2:
            out.append(part)  # a line break
        elif part and not (i == 0 and first_out):
            out.append(MASK)
    return "".join(out)


class Masker:
    """Replaces secrets in a stream of text by ``***`` (see the module docstring).

    ``feed`` what arrives, emit what it returns; ``finish`` at the end.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN})
        self._c = _compile(tuple(values))
        self._pending = ""
        # The first ``_carry`` characters of ``_pending`` belong to a match whose
        # ``***`` was already emitted.
        self._carry = 0
        # How many base64 characters were emitted just before ``_pending`` (up
        # to B64_WRAP_MIN): whether a line break at its start ends a wrapped line.
        self._run = 0

    @property
    def held(self) -> str:
        """What ``feed`` is holding back for now."""
        return self._pending

    def feed(self, text: str) -> str:
        if self._pending:
            text, self._pending = self._pending + text, ""
        if not text:
            return ""
        view = _unwrap(text, self._run)
        joined = view.text if view else text
        found = self._find(joined)
        # Where to hold back from is worked out on the blob-as-one-line text, so a
        # secret wrapped across lines is held like one split across chunks.
        spans = [view.span(*span) for span in found] if view else found
        if self._carry:
            carried = (0, view.joined(self._carry) if view else self._carry)
            found = _merge([carried, *found])
            spans = _merge([(0, min(self._carry, len(text))), *spans])
        cut_v = self._hold_from(joined, found)
        return self._emit(text, spans, view.cut(cut_v, len(text)) if view else cut_v)

    def finish(self) -> str:
        text, self._pending = self._pending, ""
        if not text:
            self._carry = self._run = 0
            return ""
        spans = self._spans(text, self._run)
        if self._carry:
            spans = _merge([(0, min(self._carry, len(text))), *spans])
        out = self._emit(text, spans, len(text))
        self._run = 0
        return out

    def mask(self, text: str) -> str:
        """``text`` masked all at once (not part of the stream)."""
        return Masker._emit_spans(text, _merge(self._spans(text, 0)), len(text), 0)

    # -- internals
    def _find(self, text: str) -> list[tuple[int, int]]:
        """Spans of the matches; a match overlapping the end of one extends it."""
        search, match = self._c.pattern.search, self._c.pattern.match
        spans = []
        pos = 0
        while (m := search(text, pos)) is not None:
            start, end = m.span()
            p = start + 1
            while p < end:
                if (m2 := match(text, p)) is not None and m2.end() > end:
                    end = m2.end()
                p += 1
            spans.append((start, end))
            pos = end
        return spans

    def _spans(self, text: str, run_before: int) -> list[tuple[int, int]]:
        """The matches in ``text`` (wrapped base64 searched as one line), as
        spans of ``text``."""
        view = _unwrap(text, run_before)
        if view is None:
            return self._find(text)
        return [view.span(*span) for span in self._find(view.text)]

    def _hold_from(self, text: str, spans: list[tuple[int, int]]) -> int:
        """Where the tail that could still become (part of) a secret starts."""
        c = self._c
        size = len(text)
        lo = max(size - c.max_len + 1, 0)
        if c.newline_free:
            nl = text.rfind("\n", lo)
            if nl >= 0:
                lo = nl + 1
        cut = size
        first, heads, partial = c.first_chars, c.heads, c.partial
        for j in range(lo, size):
            if text[j] not in first:
                continue
            found = heads.get(text[j : j + _HEAD])
            if found is not None:
                if size - j <= _HEAD:
                    cut = j
                    break
                tail = text[j:]
                if any(len(tail) <= limit and form.startswith(tail) for form, limit in found):
                    cut = j
                    break
            if partial and _is_partial(text, j, partial):
                cut = j
                break
        if spans and spans[-1][1] == size:
            # A match reaching the end could still grow (a longer form, base64
            # padding): hold it (at most its last max_len - 1 characters).
            cut = min(cut, max(spans[-1][0], size - c.max_len + 1))
        return cut

    def _emit(self, text: str, spans: list[tuple[int, int]], cut: int) -> str:
        for start, end in spans:
            # A cut inside a wrapped match goes before the line break it follows:
            # the *** of the line after it is still to come.
            if start < cut < end:
                while cut > start and text[cut - 1] in "\r\n":
                    cut -= 1
        out = Masker._emit_spans(text, spans, cut, self._carry)
        carry = 0
        for start, end in spans:
            # A match whose *** is out (it starts before the cut, or it is the
            # carried one) but which goes on past the cut: carry its rest.
            if (start < cut or (start == 0 and self._carry)) and cut < end:
                carry = end - cut
        self._pending, self._carry = text[cut:], carry
        self._run = _run_before(text, cut, self._run)
        return out

    @staticmethod
    def _emit_spans(text: str, spans: list[tuple[int, int]], cut: int, carry: int) -> str:
        if not spans:
            return text[:cut]
        parts = []
        pos = 0
        for start, end in spans:
            if start >= cut:
                break
            parts.append(text[pos:start])
            # A carried match's first *** is already out.
            parts.append(_masked(text[start:min(end, cut)], start == 0 and carry > 0))
            pos = end
        if pos < cut:
            parts.append(text[pos:cut])
        return "".join(parts)


def _run_before(text: str, cut: int, before: int) -> int:
    """How many base64 characters come just before ``text[cut]`` in the stream
    (``before``: those before ``text``), counted up to B64_WRAP_MIN."""
    i = cut
    stop = max(cut - B64_WRAP_MIN, 0)
    while i > stop and text[i - 1] in _B64_CHARS:
        i -= 1
    run = cut - i + (before if i == 0 else 0)
    return min(run, B64_WRAP_MIN)


def _is_partial(
    text: str, start: int, forms: tuple[tuple[tuple[frozenset[str], ...], int], ...]
) -> bool:
    """Whether ``text[start:]`` is a proper prefix of one of the (non-literal) forms."""
    size = len(text) - start
    for classes, limit in forms:
        if size <= limit and all(text[start + i] in classes[i] for i in range(size)):
            return True
    return False


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# ------------------------------------------------------------------ writer


class MaskingWriter:
    """A ``LogWriter`` seen through a ``Masker``: what the runner writes to.

    Decodes bytes itself (incrementally, so a character split across two reads
    is whole before masking). Used as ``async with MaskingWriter(LogWriter(...),
    masker)``: on exit it releases what the masker held back, then closes the
    writer, so the last (masked) lines are in the stream before the job's end is
    recorded.
    """

    def __init__(self, writer: LogWriter, masker: Masker) -> None:
        self.writer = writer
        self.masker = masker
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._finished = False
        self._last = "\n"  # the last character fed

    async def __aenter__(self) -> MaskingWriter:
        await self.writer.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def write_bytes(self, data: bytes) -> None:
        if self.writer.full:  # past the log cap: count what was printed, mask nothing
            self.writer.drop(len(data))
            return
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if text and not self._finished:
            if self.writer.full:
                self.writer.drop(len(text.encode("utf-8", "replace")))
                return
            self._last = text[-1]
            out = self.masker.feed(text)
            if out:
                self.writer.write(out)

    def note(self, text: str) -> None:
        """One of deployster's own lines, on a line of its own (see
        ``LogWriter.note``): judged on what was fed, since the masker may hold
        the end of a line back."""
        self.write(text if self._last == "\n" else "\n" + text)

    def close_with(self, text: str) -> None:
        self.writer.close_with(self.masker.mask(text))

    def finish(self) -> None:
        """Release everything held back; later writes are ignored."""
        if self._finished:
            return
        out = self.masker.feed(self._decoder.decode(b"", final=True)) + self.masker.finish()
        self._finished = True
        if out:
            self.writer.write(out)

    async def close(self) -> None:
        self.finish()
        await self.writer.close()

    async def seal(self) -> LastBatch | None:
        """Release what is held back, then ``LogWriter.seal``."""
        self.finish()
        return await self.writer.seal()


def job_secrets(pipeline: Iterable[Stage], admin_token: str | None) -> list[str]:
    """A job's secrets: every variable value of every stage, and the admin token."""
    values = [var.value for stage in pipeline for var in stage.environment_variables]
    if admin_token:
        values.append(admin_token)
    return values


class SecretMask:
    """Masks whole texts (a request's commands, a record shown) with one set of
    secrets. Keeps no state (``Masker.mask`` only, never the stream), so one is
    shared by every caller for a project: see ``secret_mask``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._masker = Masker(secrets)

    def mask(self, text: str) -> str:
        return self._masker.mask(text)

    def commands(self, commands: Sequence[str]) -> list[str]:
        return [self._masker.mask(c) for c in commands]


# project id -> (its pipeline, the admin token, their SecretMask). A project's
# secrets change only with its pipeline, and the registry hands out a new
# Project (a new pipeline tuple) when it re-reads one: an identity check per
# deploy request, an equality check after a re-read, a new mask only after an
# edit. (Masker's own compile cache is keyed by the values and bounded.)
_MASKS: dict[int, tuple[tuple[Stage, ...], str | None, SecretMask]] = {}


def secret_mask(project: Project | None, admin_token: str | None) -> SecretMask:
    """The mask of ``project``'s secrets (``job_secrets``) and the admin token,
    cached per project; ``None`` (a project deleted since): the admin token and
    project tokens only."""
    if project is None:
        return SecretMask(job_secrets((), admin_token))
    cached = _MASKS.get(project.id)
    if cached is not None and cached[1] == admin_token:
        pipeline, _, mask = cached
        if pipeline is project.pipeline:
            return mask
        if pipeline == project.pipeline:
            _MASKS[project.id] = (project.pipeline, admin_token, mask)
            return mask
    mask = SecretMask(job_secrets(project.pipeline, admin_token))
    _MASKS[project.id] = (project.pipeline, admin_token, mask)
    return mask
