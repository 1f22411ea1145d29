"""Secrets out of logs (docs/runner.md#secrets): the Masker's forms, its streaming hold-back and
the MaskingWriter in front of a real LogWriter."""

from __future__ import annotations

import base64
import json
import random
import shlex
import subprocess
from urllib.parse import quote, quote_plus

import pytest

from deployster.access import TOKEN_PATTERN
from deployster.ids import new_job_id
from deployster.logstream import LogWriter, read_full_log
from deployster.masking import MASK, MIN_SECRET_LEN, Masker, MaskingWriter, job_secrets
from deployster.models import EnvVar, Stage
from deployster.printable import command_header
from deployster.service import Deployster

SECRET = "s3cr3t-Val:ue/42"
# A value with every character the quoting forms treat specially.
NASTY = "p@ss w0rd$`\"'\\&;é✓"
TOKEN = "dps_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1eF3hJ5kL7n"
assert TOKEN_PATTERN.fullmatch(TOKEN)


def stream(masker: Masker, *chunks: str) -> str:
    return "".join(masker.feed(chunk) for chunk in chunks) + masker.finish()


def bash_q(value: str) -> str:
    return subprocess.run(["bash", "-c", 'printf %q "$1"', "_", value],
                          capture_output=True, text=True, check=True,
                          env={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}).stdout


def value_forms(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": value,
        "json": json.dumps(value)[1:-1],
        "json-unicode": json.dumps(value, ensure_ascii=False)[1:-1],
        "quote": quote(value),
        "quote-safe": quote(value, safe=""),
        "quote_plus": quote_plus(value),
        "shlex": shlex.quote(value),
        "double-quoted": '"' + value.replace("\\", "\\\\").replace('"', '\\"')
        .replace("$", "\\$").replace("`", "\\`") + '"',
        "printf-q": bash_q(value),
        "b64": base64.b64encode(raw).decode(),
        "b64-nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64-user": base64.b64encode(b"user:" + raw).decode(),
        "b64-a1": base64.b64encode(b"x" + raw + b"yz").decode(),
        "b64-a2": base64.b64encode(b"xy" + raw + b"z").decode(),
        "b64url-a1": base64.urlsafe_b64encode(b"\xff" + raw + b"\xfe").decode(),
        "b64url-a2": base64.urlsafe_b64encode(b"\xfb\xff" + raw).decode(),
    }


def fragments(value: str, forms: dict[str, str]) -> list[str]:
    """Text that must not survive masking: each form's core (a base64 blob keeps
    the characters of its surroundings, so only its middle is checked)."""
    out = []
    for name, form in forms.items():
        if name.startswith("b64"):
            out.append(form[len(form) // 3: 2 * len(form) // 3])
        else:
            out.append(form)
    return out


# ------------------------------------------------------------------ forms


@pytest.mark.parametrize("value", [SECRET, NASTY, "abcd", "x" * 70 + "€"])
def test_every_form_of_a_value_is_masked(value: str) -> None:
    forms = value_forms(value)
    for name, form in forms.items():
        line = f"before {form} after\n"
        masked = Masker([value]).mask(line)
        assert MASK in masked, (name, form, masked)
        for frag in fragments(value, {name: form}):
            assert frag not in masked, (name, form, masked)
        assert masked.startswith("before ") and masked.endswith(" after\n"), (name, masked)


def test_a_value_in_base64_is_masked_with_its_padding() -> None:
    out = Masker([SECRET]).mask("auth: " + base64.b64encode(SECRET.encode()).decode() + "\n")
    assert out == f"auth: {MASK}\n"


def test_a_long_value_in_wrapped_base64_output_is_masked_line_by_line() -> None:
    value = "k" * 50 + "-long-secret-" + "q" * 50
    wrapped = subprocess.run(["base64"], input=value.encode(), capture_output=True,
                             check=True).stdout.decode()
    assert wrapped.count("\n") > 1
    out = Masker([value]).mask(wrapped)
    for line in wrapped.splitlines():
        assert line not in out
    assert out.count(MASK) == wrapped.count("\n")


# ------------------------------------------------------------ wrapped base64


def wrap(blob: str, width: int, eol: str = "\n") -> str:
    """``blob`` as an encoder wraps it: lines of ``width`` characters."""
    return "".join(blob[i:i + width] + eol for i in range(0, len(blob), width))


def secret_span(blob: str, lead: int, size: int) -> tuple[int, int]:
    """The characters of a base64 ``blob`` that a secret of ``size`` bytes
    ``lead`` bytes in determines: from the first holding only its bits to the
    one it shares with what follows, then any padding."""
    start, end_bit = -(-8 * lead // 6), 8 * (lead + size)
    end = end_bit // 6 + (1 if end_bit % 6 else 0)
    while end_bit % 6 and end < len(blob) and blob[end] == "=":
        end += 1
    return start, end


def wrap_masked(blob: str, width: int, span: tuple[int, int], eol: str = "\n") -> str:
    """What the masker must make of ``wrap(blob, width)``: the span's
    characters replaced, one ``***`` on each line they are on."""
    out = []
    for i in range(0, len(blob), width):
        line = blob[i:i + width]
        lo, hi = max(span[0] - i, 0), min(span[1] - i, len(line))
        out.append((line[:lo] + MASK + line[hi:] if lo < hi else line) + eol)
    return "".join(out)


def wrapped_cases(value: str, width: int) -> list[tuple[str, str]]:
    """(text, the text as masked) for ``value`` at every byte offset that puts
    its first character in each column of a ``width``-column line (so every
    alignment and every place the wrap can split it), followed by 0, 1 or 2
    bytes (padding or not), in both alphabets."""
    raw = value.encode()
    cases = []
    for lead in range(0, width * 3 // 4 + 3):
        for trail in (0, 1, 2):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                blob = encode(b"\x01" * lead + raw + b"\xfe" * trail).decode()
                span = secret_span(blob, lead, len(raw))
                cases.append((f"$ encode\n{wrap(blob, width)}done\n",
                              f"$ encode\n{wrap_masked(blob, width, span)}done\n"))
    return cases


@pytest.mark.parametrize("width", [76, 64])
@pytest.mark.parametrize("value", [SECRET, NASTY, "abcd", "x" * 70 + "€"])
def test_base64_wrapped_at_76_and_64_columns_is_masked_at_every_offset(
    value: str, width: int
) -> None:
    masker = Masker([value])
    for text, expected in wrapped_cases(value, width):
        assert masker.mask(text) == expected, text


@pytest.mark.parametrize("width", [76, 64])
def test_a_wrapped_secret_is_masked_at_every_chunk_boundary(width: int) -> None:
    for text, expected in wrapped_cases(SECRET, width)[::2]:
        for cut in range(len(text) + 1):
            masker = Masker([SECRET])
            first = masker.feed(text[:cut])
            got = first + masker.feed(text[cut:]) + masker.finish()
            assert got == expected, (cut, first, got)


def test_random_chunking_of_wrapped_base64_never_changes_the_result() -> None:
    rng = random.Random(11)
    for _ in range(150):
        lead, width = rng.randrange(120), rng.choice((76, 64))
        eol = rng.choice(("\n", "\r\n"))
        raw = bytes(rng.randrange(256) for _ in range(lead)) + SECRET.encode()
        blob = base64.b64encode(raw + b"tail").decode()
        text = "ok\n" + wrap(blob, width, eol) + "after\n"
        expected = wrap_masked(blob, width, secret_span(blob, lead, len(SECRET)), eol)
        out, pos = [], 0
        masker = Masker([SECRET])
        while pos < len(text):
            step = rng.randrange(1, 40)
            out.append(masker.feed(text[pos:pos + step]))
            pos += step
        out.append(masker.finish())
        assert "".join(out) == "ok\n" + expected + "after\n", (lead, width, repr(eol))


@pytest.mark.parametrize(("encoder", "width"),
                         [("base64", 76), ("base64 -w 64", 64), ("openssl base64", 64)])
@pytest.mark.parametrize("value", [SECRET, SECRET * 10])
def test_a_secret_in_wrapped_base64_from_real_encoders_is_masked(
    encoder: str, width: int, value: str
) -> None:
    # The review's case is lead 50 with base64: the encoding of the secret ends
    # one line and starts the next, and neither line was masked.
    for lead in (50, 56, 40, 41, 47, 3):
        printed = subprocess.run(
            ["sh", "-c", f'(printf %0{lead}d 0; printf %s "$SECRET") | {encoder}'],
            env={"SECRET": value, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
            check=True).stdout
        blob = base64.b64encode(b"0" * lead + value.encode()).decode()
        assert printed == wrap(blob, width)
        start, end = secret_span(blob, lead, len(value))
        out = Masker([value]).mask(printed)
        assert out == wrap_masked(blob, width, (start, end)), lead
        if start // width != (end - 1) // width:  # split by the wrap: one *** per line
            assert out.count(MASK) == (end - 1) // width - start // width + 1


def test_a_wrapped_project_token_is_masked_at_every_offset() -> None:
    masker = Masker()  # a project token is masked by its shape, with no secrets given
    for width in (76, 64):
        for lead in range(width * 3 // 4 + 3):
            blob = base64.b64encode(b"u" * lead + TOKEN.encode()).decode()
            span = secret_span(blob, lead, len(TOKEN))
            assert masker.mask(wrap(blob, width)) == wrap_masked(blob, width, span), lead


def test_only_a_wrapped_line_that_could_go_on_into_a_secret_is_held() -> None:
    line = base64.b64encode(b"\x01" * 57).decode()  # 76 characters
    masker = Masker([SECRET])
    # A full base64 line whose end could not begin the secret: nothing held.
    assert masker.feed(line + "\n") == line + "\n"
    assert masker.feed("plain " * 20 + "\n") == "plain " * 20 + "\n"
    # One whose end could (the secret's encoding starts there): held, with its
    # line break, until the next line says whether the blob goes on.
    blob = base64.b64encode(b"\x01" * 55 + SECRET.encode()).decode()
    start = secret_span(blob, 55, len(SECRET))[0]
    assert start == 74
    first = masker.feed(blob[:76] + "\n")
    assert first == blob[:start] and masker.held == blob[start:76] + "\n"
    assert masker.feed(blob[76:] + "\n") == f"{MASK}\n{MASK}\n"
    # Short lines (not a wrap) hold nothing before their newline, as always.
    masker = Masker([SECRET])
    assert masker.feed(blob[:40] + "\n") == blob[:40] + "\n"


def test_a_value_holding_a_control_character_is_masked_in_a_command_header() -> None:
    value = "tab\tin-value\x1b"
    header = command_header(1, 2, f"echo '{value}'")
    assert "\\t" in header and "\x1b" not in header
    assert Masker([value]).mask(header) == f"[1/2] $ echo '{MASK}'\n"


@pytest.mark.parametrize("lead", [b"", b"a", b"ab", b"abc", b"Bearer:"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_a_token_shaped_string_is_masked_as_is_and_in_base64(lead: bytes, encode: object) -> None:
    masker = Masker()
    assert masker.mask(f"x {TOKEN} y") == f"x {MASK} y"
    assert callable(encode)
    for trail in (b"", b"!", b"xyz"):
        blob = encode(lead + TOKEN.encode() + trail).decode()
        out = masker.mask(f"[{blob}]")
        assert MASK in out, (lead, trail, blob)
        # The token's body is gone: at most the characters around it are left.
        assert len(out) <= len(f"[{MASK}]") + (len(lead) + len(trail)) * 4 // 3 + 4, out


def test_random_tokens_in_base64_are_always_caught() -> None:
    rng = random.Random(5)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    masker = Masker()
    for _ in range(300):
        token = "dps_" + "".join(rng.choice(alphabet) for _ in range(40))
        lead = bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode(lead + token.encode()).decode()
            out = masker.mask(blob)
            assert out.endswith(MASK) and len(out) <= len(MASK) + 8, (token, lead, out)


def test_short_values_are_not_masked() -> None:
    assert MIN_SECRET_LEN == 4
    masker = Masker(["1", "on", "abc", ""])
    text = "1 on abc\n"
    assert stream(masker, text) == text


def test_no_secrets_is_the_identity_and_holds_nothing_back() -> None:
    masker = Masker()
    for chunk in ("building... 45%", " done\n", "downloaded 3 files", "Zebra kd ", "\n"):
        assert masker.feed(chunk) == chunk
        assert masker.held == ""
    assert masker.finish() == ""
    # Only what could begin a token is held: "d" may be followed by "ps_...".
    assert masker.feed("the end") == "the en"
    assert masker.feed("\n") == "d\n"


def test_ordinary_text_is_not_held_back_with_secrets_either() -> None:
    masker = Masker([SECRET, NASTY])
    assert masker.feed("compiling module 7 of 9") == "compiling module 7 of 9"
    assert masker.feed("...") == "..."


def test_only_a_possible_start_of_a_secret_is_held() -> None:
    masker = Masker([SECRET])
    assert masker.feed("key is s3cr") == "key is "
    assert masker.held == "s3cr"
    assert masker.feed("ambled eggs\n") == "s3crambled eggs\n"
    assert masker.feed("then dps_abc") == "then "
    assert masker.finish() == "dps_abc"


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("value", [SECRET, NASTY])
def test_a_secret_split_at_every_position_across_two_feeds_is_caught(value: str) -> None:
    forms = value_forms(value)
    forms["token"] = TOKEN
    forms["token-b64"] = base64.b64encode(b"u:" + TOKEN.encode()).decode()
    for name, form in forms.items():
        text = f"<{form}>\n"
        expected = Masker([value]).mask(text)
        assert MASK in expected, name
        for cut in range(len(text) + 1):
            masker = Masker([value])
            first = masker.feed(text[:cut])
            got = first + masker.feed(text[cut:]) + masker.finish()
            assert got == expected, (name, cut, first, got)


def test_random_chunking_never_changes_the_result() -> None:
    rng = random.Random(7)
    secrets = [SECRET, NASTY, "hunter2hunter2"]
    pieces = ["plain text ", "\n", "s3c", "dps_", "ZHBz", "%40", *value_forms(SECRET).values(),
              *value_forms(NASTY).values(), TOKEN, "hunter2hunter2", "hunter2"]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30)))
        expected = Masker(secrets).mask(text)
        masker = Masker(secrets)
        out, pos = [], 0
        while pos < len(text):
            step = rng.randrange(1, 12)
            out.append(masker.feed(text[pos:pos + step]))
            pos += step
        out.append(masker.finish())
        assert "".join(out) == expected, text
        assert SECRET not in expected and "hunter2hunter2" not in expected


def test_adjacent_and_overlapping_secrets() -> None:
    masker = Masker(["abcdef", "defghi", "wxyz1234"])
    assert masker.mask("[abcdefwxyz1234]") == f"[{MASK}{MASK}]"
    assert masker.mask("[abcdefghi]") == f"[{MASK}]"  # overlapping: one mask
    assert stream(masker, "[abcd", "efg", "hi]\n") == f"[{MASK}]\n"
    assert stream(Masker(["aaaa"]), "a" * 10, "a" * 10, "\n") == f"{MASK}\n"


def test_the_longest_secret_wins() -> None:
    masker = Masker(["hunter2", "hunter2hunter2"])
    assert masker.mask("x hunter2hunter2 y") == f"x {MASK} y"
    assert stream(masker, "x hunter2", "hunter2 y") == f"x {MASK} y"


def test_unicode_values_and_text() -> None:
    value = "pässwörd✓"
    masker = Masker([value])
    text = f"→ {value} ← {quote(value)} {json.dumps(value)}\n"
    out = stream(masker, text[:4], text[4:9], text[9:])
    assert out == f"→ {MASK} ← {MASK} \"{MASK}\"\n"


def test_job_secrets_are_every_stage_value_and_the_admin_token() -> None:
    pipeline = (
        Stage("Production", "main", (EnvVar("A", "prod-value"), EnvVar("B", "x"))),
        Stage("Staging", "dev", (EnvVar("A", "staging-value"),)),
    )
    assert job_secrets(pipeline, "admin-token") == ["prod-value", "x", "staging-value",
                                                    "admin-token"]
    assert job_secrets((), None) == []


# ------------------------------------------------------------------ the writer


async def test_masking_writer_in_front_of_a_real_log_writer(core: Deployster) -> None:
    job_id = new_job_id()
    value = "pässwörd✓-secret"
    payload = f"one {value} two {TOKEN}\nthree ✓✓✓\n".encode()
    async with MaskingWriter(LogWriter(core.redis, core.keys, job_id, cap_bytes=1 << 20),
                             Masker([value])) as log:
        log.write(f"$ echo {value}\n")
        # Byte by byte: every multi-byte character and every secret is split.
        for i in range(len(payload)):
            log.write_bytes(payload[i:i + 1])
        log.write_bytes(b"tail without newline " + value.encode()[:5])
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text == (f"$ echo {MASK}\none {MASK} two {MASK}\nthree ✓✓✓\n"
                    f"tail without newline {value[:4]}")
    assert value not in text and TOKEN not in text
