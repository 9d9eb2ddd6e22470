"""Stop strings are cut out of streamed text even when they arrive in pieces, and nothing is shown twice."""

from __future__ import annotations

from synatra_local.runtime.stops import StopScanner


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    """Feed the chunks until a stop; return everything shown (flush included) and whether it stopped."""
    scanner = StopScanner(stops)
    shown = []
    for chunk in chunks:
        text, stopped = scanner.feed(chunk)
        shown.append(text)
        if stopped:
            return "".join(shown), True
    shown.append(scanner.flush())
    return "".join(shown), False


def test_no_stops_pass_through_immediately() -> None:
    scanner = StopScanner([])
    assert scanner.feed("<|im_") == ("<|im_", False)
    assert scanner.feed("end|>") == ("end|>", False)
    assert scanner.flush() == ""
    assert StopScanner([""]).feed("abc") == ("abc", False)


def test_stop_in_one_chunk() -> None:
    scanner = StopScanner(["<|im_end|>"])
    assert scanner.feed("안녕하세요<|im_end|>\n<|im_start|>user") == ("안녕하세요", True)
    assert scanner.stopped
    assert scanner.feed("more") == ("", True)
    assert scanner.flush() == ""


def test_stop_split_across_feeds() -> None:
    scanner = StopScanner(["<|im_end|>"])
    assert scanner.feed("답입니다<|im") == ("답입니다", False)
    assert scanner.feed("_en") == ("", False)
    assert scanner.feed("d|>after") == ("", True)


def test_stop_split_into_single_characters() -> None:
    stop = "[/INST]"
    assert run([stop], ["네", *stop, "뒤"]) == ("네", True)


def test_false_start_is_released() -> None:
    scanner = StopScanner(["[INST]"])
    assert scanner.feed("a [IN") == ("a ", False)
    assert scanner.feed("DEX] b") == ("[INDEX] b", False)
    assert scanner.flush() == ""


def test_held_text_released_on_flush() -> None:
    scanner = StopScanner(["</s>"])
    assert scanner.feed("끝</") == ("끝", False)
    assert scanner.flush() == "</"
    assert scanner.flush() == ""


def test_stop_at_very_start() -> None:
    assert run(["</s>"], ["</s>hello"]) == ("", True)
    assert run(["</s>"], ["<", "/s", ">hello"]) == ("", True)


def test_overlapping_prefixes() -> None:
    stops = ["[INST]", "[\\INST]", "[/INST]"]
    assert run(stops, ["x [", "\\", "INST] y"]) == ("x ", True)
    assert run(stops, ["x [", "/IN", "ST]"]) == ("x ", True)
    assert run(["aab"], ["a", "a", "a", "b"]) == ("a", True)
    assert run(["abab"], ["ab", "aab", "ab"]) == ("aba", True)


def test_earliest_stop_wins() -> None:
    assert run(["<|im_end|>", "</s>"], ["a</s>b<|im_end|>"]) == ("a", True)
    assert run(["long stop", "stop"], ["x long stop"]) == ("x ", True)


def test_one_stop_prefix_of_another() -> None:
    assert run(["<|im", "<|im_end|>"], ["a<|", "im_end|>"]) == ("a", True)
    assert run(["</s>", "</"], ["a<", "b"]) == ("a<b", False)


def test_text_without_stop_is_unchanged() -> None:
    text = "대한민국은 민주공화국이다. [INS] </ <|im_ 끝"
    chunks = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert run(["[INST]", "</s>", "<|im_end|>"], chunks) == (text, False)
