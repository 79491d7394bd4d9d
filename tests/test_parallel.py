"""The one bounded parallel map: order, in-process mode, the bound on items in flight, errors."""

import threading
import time

import pytest

from cpn_dist.parallel import parallel_map


def square(x: int) -> int:
    time.sleep(0.001 * (x % 3))  # later items may finish first
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.parametrize("workers, threads", [(0, False), (2, False), (3, True)])
def test_results_come_in_item_order(workers, threads):
    assert list(parallel_map(square, range(20), workers, threads=threads)) == [x * x for x in range(20)]


def test_in_process_mode_reads_one_item_per_result():
    read = []

    def items():
        for i in range(5):
            read.append(i)
            yield i

    results = parallel_map(lambda x: threading.get_ident(), items(), 0)
    assert next(results) == threading.get_ident() and read == [0]


@pytest.mark.parametrize("depth", [1, 4])
def test_at_most_depth_items_are_read_ahead(depth):
    read = []

    def items():
        for i in range(30):
            read.append(i)
            yield i

    for i, _ in enumerate(parallel_map(lambda x: x, items(), 2, depth=depth, threads=True)):
        assert len(read) <= i + depth  # result i is yielded before item i + depth is read


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_is_raised_where_its_result_would_be(workers):
    got = []
    with pytest.raises(ValueError, match="three"):
        for x in parallel_map(fail_on_three, range(10), workers):
            got.append(x)
    assert got == [0, 1, 2]
