"""A job's log as a virtual list: only the rows on screen are ever rendered, so
a window of tens of thousands of lines scrolls, wraps and searches as cheaply
as a short one.

The view holds plain lines (at most ``max_lines``; the oldest drop off), each
with the time its chunk was written when that is known, and draws each row on
demand: a timestamp column (``timestamps``), hard wrap at the width (``wrap``,
like ``less``), search matches highlighted with the current one stronger.

A line keeps what a terminal would show of it (``decode``): its colours and
styles (ANSI SGR codes, as every build tool prints them; the colour set on
one line carries to the next, as in a terminal) as spans beside its plain
text, which is what is searched and measured. Nothing else a job prints
reaches the screen as a command: cursor moves, screen clears, titles and
other escape sequences are dropped, other control characters shown as �.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from datetime import datetime, tzinfo
from functools import lru_cache

from rich.ansi import AnsiDecoder
from rich.cells import cell_len, chop_cells
from rich.style import Style
from rich.text import Span, Text
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

STAMP_WIDTH = 13  # "12:04:31.250 "
# C1 controls too: some terminals take U+009B as CSI, as they take ESC [.
_control = re.compile("[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]").sub


def clean(line: str) -> str:
    """What a terminal would show: the text after the last carriage return
    (progress bars redraw a line), tabs expanded, control characters visible."""
    if "\r" in line:
        line = next((p for p in reversed(line.split("\r")) if p), "")
    if "\t" in line:
        line = line.expandtabs()
    return _control("�", line) if not line.isprintable() else line


# SGR (colours and styles: group 1, its parameters), kept; every other escape
# sequence, dropped: CSI (cursor moves, clears…), OSC (titles, links) ended by
# BEL or ST or the line, DCS/SOS/PM/APC, and two-byte escapes (charsets…).
_ESCAPES = re.compile(
    r"\x1b\[([0-9;]*)m"
    r"|\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\|$)"
    r"|\x1b[ -/]*[0-~]")
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_NOT_SGR = re.compile(r"\x1b(?!\[[0-9;]*m)")  # an escape that is no SGR
# What a log must not do to a reader even in colour: blink or hide its text.
_STEADY = Style(blink=False, blink2=False, conceal=False)


def _sgr_only(found: re.Match[str]) -> str:
    return found.group() if found.group(1) is not None else ""


@lru_cache(maxsize=4096)
def _apply(style: Style, params: str) -> Style:
    """``style`` after one SGR sequence (``params``: "1;32"), as a terminal
    takes it (rich's decoder's rules); few distinct pairs make a log's
    colours, so each is worked out once."""
    decoder = AnsiDecoder()
    decoder.style = style
    decoder.decode_line(f"\x1b[{params}m")
    return decoder.style


@lru_cache(maxsize=1024)
def _shown(style: Style) -> Style:
    return style + _STEADY if style.blink or style.blink2 or style.conceal else style


def _advance(text: str, style: Style) -> Style:
    for found in _SGR.finditer(text):
        style = _apply(style, found.group(1))
    return style


def decode(line: str, style: Style) -> tuple[str, list[Span] | None, Style]:
    """A line of a job's output as a terminal shows it: (its plain text, the
    spans of its colours, the SGR state after it). ``style`` is the state
    before it (a colour left on by the line before). As ``clean``: the text
    after the last carriage return (with the colours set before it), tabs
    expanded, control characters shown; escape sequences other than SGR are
    dropped."""
    if _NOT_SGR.search(line):
        line = _ESCAPES.sub(_sgr_only, line)
    if "\r" in line:
        pieces = line.split("\r")
        chosen = len(pieces) - 1  # the last piece that prints something
        while chosen > 0 and not _SGR.sub("", pieces[chosen]):
            chosen -= 1
        for piece in pieces[:chosen]:
            style = _advance(piece, style)
        text, after = pieces[chosen], pieces[chosen + 1:]
    else:
        text, after = line, []
    # split: text, SGR parameters, text, SGR parameters… text.
    pieces = _SGR.split(text)
    spans: list[Span] = []
    at = 0
    for i in range(0, len(pieces), 2):
        if i:
            style = _apply(style, pieces[i - 1])
        chunk = pieces[i]
        if chunk:
            if style:
                spans.append(Span(at, at + len(chunk), _shown(style)))
            at += len(chunk)
    for piece in after:
        style = _advance(piece, style)
    plain = "".join(pieces[::2])
    if "\t" in plain:  # expanding shifts what follows: the spans with it
        expanded = Text(plain, spans=spans)
        expanded.expand_tabs()
        plain, spans = expanded.plain, expanded.spans
    if not plain.isprintable():
        plain = _control("�", plain)  # one character for one: the spans hold
    return plain, spans or None, style


def width_of(line: str) -> int:
    return len(line) if line.isascii() else cell_len(line)


class LogView(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {"logview--match", "logview--current", "logview--stamp"}

    def __init__(self, *, max_lines: int, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self.lines: list[str] = []
        self.spans: list[list[Span] | None] = []  # each line's colours (``decode``)
        self.stamps: list[int | None] = []  # epoch ms each line's chunk was written
        self._sgr = Style.null()  # the colours the last line left on
        self.first = 0  # the number of lines[0] in the whole log as seen: lines dropped
        self.auto_scroll = True
        self.wrap = False
        self.timestamps = False
        self.tz: tzinfo | None = None  # timestamps shown in this zone (None: local)
        self.pattern: re.Pattern[str] | None = None
        self.matches: list[int] = []  # line numbers (as ``first``), ascending
        self.current: int | None = None  # index into ``matches``
        self._rows: list[tuple[int, int]] = []  # wrap: (line index, first char) per row
        self._rows_width = 0
        self._max_width = 0

    # ---------------------------------------------------------------- content
    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def has_stamps(self) -> bool:
        return any(t is not None for t in self.stamps)

    def clear(self) -> None:
        self.lines.clear()
        self.spans.clear()
        self.stamps.clear()
        self._sgr = Style.null()
        self.first = 0
        self.matches.clear()
        self.current = None
        self._rows.clear()
        self._max_width = 0
        self._layout()
        self.scroll_to(0, 0, animate=False, immediate=True)

    def append(self, lines: list[str], stamps: list[int | None]) -> int:
        """Add lines (with their times); returns how many old lines dropped off."""
        if not lines:
            return 0
        start = self.first + len(self.lines)
        plain: list[str] = []
        spans: list[list[Span] | None] = []
        style = self._sgr
        for line in lines:
            if style or "\x1b" in line:
                text, marks, style = decode(line, style)
            else:  # no colour: the quick way
                text, marks = clean(line), None
            plain.append(text)
            spans.append(marks)
        self._sgr = style
        lines = plain
        self.lines.extend(lines)
        self.spans.extend(spans)
        self.stamps.extend(stamps)
        self._max_width = max(self._max_width, max(map(width_of, lines)))
        if self.pattern is not None:
            search = self.pattern.search
            self.matches.extend(start + i for i, line in enumerate(lines) if search(line))
        dropped = len(self.lines) - self.max_lines
        if dropped > 0:
            del self.lines[:dropped]
            del self.spans[:dropped]
            del self.stamps[:dropped]
            self.first += dropped
            self._drop_matches()
        if self.wrap and dropped <= 0:
            self._wrap_rows(start - self.first)
        self._layout(rewrap=self.wrap and dropped > 0)
        if self.auto_scroll:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        return max(0, dropped)

    def _drop_matches(self) -> None:
        cut = bisect_left(self.matches, self.first)
        if cut:
            del self.matches[:cut]
            if self.current is not None:
                self.current = self.current - cut if self.current >= cut else None

    # ----------------------------------------------------------------- layout
    @property
    def stamp_width(self) -> int:
        return STAMP_WIDTH if self.timestamps else 0

    def _text_width(self) -> int:
        width = self.scrollable_content_region.width or self.size.width
        return max(10, width - self.stamp_width)

    def _wrap_rows(self, from_index: int = 0) -> None:
        """Rows for lines[from_index:], hard-wrapped at the text width."""
        width = self._text_width()
        if from_index == 0 or width != self._rows_width:
            self._rows, from_index = [], 0
        self._rows_width = width
        rows = self._rows
        for i in range(from_index, len(self.lines)):
            line = self.lines[i]
            if len(line) <= width and width_of(line) <= width:
                rows.append((i, 0))
            elif line.isascii():
                rows.extend((i, s) for s in range(0, len(line), width))
            else:
                at = 0
                for piece in chop_cells(line, width):
                    rows.append((i, at))
                    at += len(piece)

    def _layout(self, *, rewrap: bool = False) -> None:
        if self.wrap:
            if rewrap or self._rows_width != self._text_width():
                self._wrap_rows()
            self.virtual_size = Size(self._text_width() + self.stamp_width, len(self._rows))
        else:
            self.virtual_size = Size(self._max_width + self.stamp_width, len(self.lines))
        self.refresh()

    def on_resize(self, _event: Resize) -> None:
        if self.wrap:
            self._layout(rewrap=True)

    def set_wrap(self, wrap: bool) -> None:
        top = self._line_at(self.scroll_offset.y)
        self.wrap = wrap
        self._rows_width = 0
        self._layout(rewrap=True)
        self._keep_in_view(top)

    def set_timestamps(self, on: bool) -> None:
        top = self._line_at(self.scroll_offset.y)
        self.timestamps = on
        self._layout(rewrap=True)
        self._keep_in_view(top)

    def _line_at(self, row: int) -> int:
        if not self.wrap:
            return row
        return self._rows[row][0] if 0 <= row < len(self._rows) else len(self.lines)

    def row_of(self, index: int) -> int:
        """The first row that shows lines[index]."""
        return bisect_left(self._rows, (index, 0)) if self.wrap else index

    def _keep_in_view(self, index: int) -> None:
        if self.auto_scroll:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.scroll_to(y=self.row_of(index), animate=False, immediate=True)

    # ----------------------------------------------------------------- search
    def search(self, query: str) -> int:
        """Highlight ``query`` (literal; case-insensitive unless it has a capital,
        like k9s and less) and go to the nearest match at or below the top of
        the view; returns the number of matching lines."""
        self.matches.clear()
        self.current = None
        if not query:
            self.pattern = None
            self.refresh()
            return 0
        flags = 0 if any(c.isupper() for c in query) else re.IGNORECASE
        self.pattern = re.compile(re.escape(query), flags)
        search = self.pattern.search
        self.matches = [self.first + i for i, line in enumerate(self.lines) if search(line)]
        if self.matches:
            top = self.first + self._line_at(self.scroll_offset.y)
            at = bisect_left(self.matches, top)
            self.go_to_match(at if at < len(self.matches) else len(self.matches) - 1)
        self.refresh()
        return len(self.matches)

    def next_match(self, step: int) -> bool:
        """The next (``step`` 1) or previous (-1) match, wrapping around."""
        if not self.matches:
            return False
        if self.current is None:
            top = self.first + self._line_at(self.scroll_offset.y)
            at = bisect_left(self.matches, top)
            self.go_to_match((at if step > 0 else at - 1) % len(self.matches))
        else:
            self.go_to_match((self.current + step) % len(self.matches))
        return True

    def go_to_match(self, at: int) -> None:
        self.current = at
        index = self.matches[at] - self.first
        row = self.row_of(index)
        x = 0
        if not self.wrap and self.pattern is not None:
            found = self.pattern.search(self.lines[index])
            width = self.scrollable_content_region.width - self.stamp_width
            if found is not None and width > 0 and found.end() > width:
                x = found.start() - 8
        self.scroll_to(x=max(0, x), y=max(0, row - self.size.height // 3), animate=False,
                       immediate=True)
        self.refresh()

    # ----------------------------------------------------------------- render
    def _stamp(self, t: int | None) -> str:
        if t is None:
            return " " * STAMP_WIDTH
        when = datetime.fromtimestamp(t / 1000, self.tz)
        return f"{when:%H:%M:%S}.{t % 1000:03d} "

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width or self.size.width
        row = scroll_y + y
        base = self.rich_style
        if self.wrap:
            if row >= len(self._rows):
                return Strip.blank(width, base)
            index, start = self._rows[row]
            after = self._rows[row + 1] if row + 1 < len(self._rows) else None
            end = after[1] if after is not None and after[0] == index else None
            scroll_x = 0
        else:
            if row >= len(self.lines):
                return Strip.blank(width, base)
            index, start, end = row, 0, None
        text = self._row_text(index, start, end)
        text.stylize_before(base)
        strip = Strip(text.render(self.app.console), text.cell_len)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _row_text(self, index: int, start: int, end: int | None) -> Text:
        line = self.lines[index]
        text = Text(no_wrap=True, end="")
        if self.timestamps:
            stamp = self._stamp(self.stamps[index]) if start == 0 else " " * STAMP_WIDTH
            text.append(stamp, self.get_component_rich_style("logview--stamp"))
        offset = len(text) - start
        stop = len(line) if end is None else end
        text.append(line[start:stop])
        for span in self.spans[index] or ():  # its colours, on this row's part
            a, b = max(span.start, start), min(span.end, stop)
            if a < b:
                text.stylize(span.style, a + offset, b + offset)
        if self.pattern is not None:
            number = self.first + index
            current = self.current is not None and self.matches[self.current] == number
            style = self.get_component_rich_style(
                "logview--current" if current else "logview--match")
            reach = len(self.pattern.pattern)  # a match may straddle two rows
            for found in self.pattern.finditer(line, max(0, start - reach), stop + reach):
                a, b = max(found.start(), start), min(found.end(), stop)
                if a < b:
                    text.stylize(style, a + offset, b + offset)
        return text
