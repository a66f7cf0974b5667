"""Output text: stop strings cut out, streamed deltas never taken back."""

from __future__ import annotations

from wanspec.serve.text import TextStream, cut_at_stop


def test_cut_at_the_first_stop_string():
    assert cut_at_stop("hello world. bye", ["bye", "."]) == ("hello world", ".")
    assert cut_at_stop("hello world. bye", [".", "bye"], include=True) == ("hello world.", ".")
    assert cut_at_stop("hello", ["x"]) == ("hello", None)


def stream(pieces, stops, include=False):
    """Feed a text growing piece by piece (one piece = one token) and collect the deltas."""
    text_of = dict(enumerate(pieces))
    ids: list[int] = []

    def decode(tokens):
        return "".join(text_of[t] for t in tokens)

    s = TextStream(decode, stops, include)
    out = []
    for i in range(len(pieces)):
        ids.append(i)
        out.append(s.delta(ids, finished=i == len(pieces) - 1))
    return out, s


def test_stream_holds_back_a_possible_stop_string_and_cuts_it():
    deltas, s = stream(["ab", "c", "EN", "D", "x"], ["END"])
    assert "".join(deltas) == "abc" and s.stop_string == "END"
    # a piece is sent once it can no longer be the start of the stop string
    assert deltas[0] == "" and deltas[1] == "a"


def test_stream_without_stops_sends_everything_but_an_incomplete_character():
    deltas, _ = stream(["a", "b\ufffd", "c"], [])
    assert deltas == ["a", "b", "\ufffdc"]  # (an incomplete character is sent once complete)


def test_streamed_text_equals_the_whole_text():
    pieces = ["To", " be", ",", " or", " not", " to", " be"]
    deltas, s = stream(pieces, [" not"])
    assert "".join(deltas) == s.final_text(list(range(len(pieces)))) == "To be, or"
