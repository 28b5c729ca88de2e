from model.stopwatch import Stopwatch


def test_a_stopwatch_counts_up_from_when_it_was_made_in_seconds_and_milliseconds():
    clock = Stopwatch()
    first = clock.elapsed
    ms = clock.elapsed_ms
    second = clock.elapsed
    assert 0 <= first <= ms / 1000 <= second
