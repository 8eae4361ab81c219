from flows.work import draw_sleep


def test_a_number_is_used_as_is() -> None:
    assert draw_sleep(1.5) == 1.5


def test_a_range_is_drawn_uniformly() -> None:
    draws = [draw_sleep((0.0, 3.0)) for _ in range(300)]
    assert all(0 <= d <= 3 for d in draws)
    assert len(set(draws)) > 100
    assert min(draws) < 0.5 and max(draws) > 2.5
