"""local_session's driver heap: the executors of a local session live in the driver's JVM,
so Spark's default 1 GiB heap is too small for this library's data (it ran out on 100,000
cached 784-wide rows in bench/first_run.py, 2 runs of 4)."""

from __future__ import annotations

import pytest

from distkeras.spark import default_driver_memory

GIB = 2**30


@pytest.mark.parametrize("physical, expected", [
    (24 * GIB, "2048m"),
    (6 * GIB, "1536m"),  # a quarter of a small machine
    (2 * GIB, "1024m"),  # never below Spark's own default
    (0, "1024m"),  # unknown
])
def test_default_driver_memory(physical, expected):
    assert default_driver_memory(physical) == expected


def test_the_session_jvm_got_that_heap(spark):
    configured = spark.sparkContext.getConf().get("spark.driver.memory")
    assert configured == default_driver_memory()
    max_heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    # the JVM reports a little less than -Xmx (one survivor space is not counted)
    assert max_heap > 0.85 * int(configured.rstrip("m")) * 2**20, (max_heap, configured)
