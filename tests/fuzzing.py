"""What the fuzz tests share (tests/test_fuzz_cli.py, tests/test_fuzz_files.py): settings, mutations, the verdict.

Every example is reproducible (``derandomize``: the same examples on every run and machine, no example
database) and bounded: a handful of examples per test, each under a wall-clock limit, so the whole fuzz
set takes seconds. The verdict is the same everywhere: an input ends in success or in an
:class:`~fl_smpc.errors.FlSmpcError` whose message is one line; any other exception, or an example that
runs past its limit, fails the test with the input that caused it.
"""

import contextlib
import copy
import signal

from hypothesis import HealthCheck, settings, strategies as st

from fl_smpc.errors import FlSmpcError

EXAMPLE_SECONDS = 10  # far above any example's time: only a hang reaches it


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomized examples, no deadline (the wall-clock limit is :func:`time_limit`'s)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


class Hang(BaseException):
    """An example ran past its limit (a BaseException, so no ``except Exception`` in the code swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float = EXAMPLE_SECONDS):
    """Raise :class:`Hang` in the block once ``seconds`` of wall-clock time have passed."""

    def expired(_signum, _frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line_error_or_result(call, *args):
    """``call(*args)``'s result, or the FlSmpcError it raised, checked to be one non-empty line.

    Any other exception propagates: that is the bug the fuzzing looks for.
    """
    try:
        with time_limit():
            return call(*args)
    except FlSmpcError as err:
        text = str(err)
        assert text.strip(), f"{type(err).__name__} with an empty message"
        assert len(text.splitlines()) == 1 and "\n" not in text, f"a message of several lines: {text!r}"
        return err


# --- byte-level mutations of a valid file ---

# Bytes that change a parser's path: separators, quotes, line ends, BOM, NUL, invalid UTF-8, odd numbers, JSON.
INTERESTING = [
    b",", b"\t", b"\n", b"\r\n", b"\r", b'"', b"'", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\xe2\x80\xa8",
    b" ", b"nan", b"inf", b"-inf", b"1e39", b"-0", b"1e400", b"0x1", b"1_0", b"", b"0", b"1", b"2", b"-1",
    b"ham", b"spam", b"label", b"text", b"{", b"}", b"[", b"]", b":", b"null", b"true", b"9" * 400,
]  # fmt: skip


@st.composite
def mutated(draw, base: bytes, max_edits: int = 4) -> bytes:
    """``base`` after 1 to ``max_edits`` random edits: insert, delete, replace, truncate, repeat or drop a line."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "repeat line", "drop line"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[pos:pos] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "replace":
            data[pos : pos + 1] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=1))
        elif kind == "truncate":
            del data[pos:]
        else:
            lines = bytes(data).split(b"\n")
            i = pos % len(lines)
            if kind == "repeat line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


# --- structural mutations of a JSON document ---

HUGE_INT = 10**400  # a JSON integer no float holds
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([HUGE_INT, -HUGE_INT, 0, 1, 2, -1, 1e39, 2**32, "bob", "alice", "jane", "../x", "me", "a\nb", ""]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def places(doc, found):
    """Every (container, key) pair in ``doc``, containers included, in document order."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found.append((doc, key))
        places(value, found)
    return found


@st.composite
def mutated_document(draw, doc, max_edits: int = 3):
    """A deep copy of ``doc`` after 1 to ``max_edits`` edits: a value replaced or tweaked, a key dropped or added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_edits))):
        spots = places(doc, [])
        if not spots:
            break
        container, key = draw(st.sampled_from(spots))
        kind = draw(st.sampled_from(["replace", "tweak", "drop", "add"]))
        value = container[key]
        if kind == "replace":
            container[key] = draw(json_values)
        elif kind == "tweak" and isinstance(value, (int, float)) and not isinstance(value, bool):
            container[key] = draw(st.sampled_from([-value, value * 2, value + 1, 1e39, float("nan"), HUGE_INT]))
        elif kind == "tweak" and isinstance(value, list) and value:
            container[key] = draw(st.sampled_from([value[:-1], value + value[-1:], [value], value[::-1]]))
        elif kind == "drop":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=8))] = draw(json_values)
        else:
            container.insert(key, draw(json_values))
    return doc
