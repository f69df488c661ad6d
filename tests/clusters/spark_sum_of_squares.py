"""A PySpark job of our own: the sum of the squares of 1..n, computed by the cluster's executors.

    spark-submit --master spark://127.0.0.1:<port> spark_sum_of_squares.py <n>

Prints `sum_of_squares=<sum>` and `executor_pids=<pids>` (the processes that ran the tasks).
"""

import os
import sys

from pyspark.sql import SparkSession


def main() -> None:
    """Runs the job on the master spark-submit names."""
    n = int(sys.argv[1])
    spark = SparkSession.builder.appName("SumOfSquares").getOrCreate()
    numbers = spark.sparkContext.parallelize(range(1, n + 1), numSlices=4)
    total = numbers.map(lambda x: x * x).sum()
    pids = sorted(set(numbers.mapPartitions(lambda _: [os.getpid()]).collect()))
    print(f"sum_of_squares={total}")
    print(f"executor_pids={','.join(map(str, pids))}")
    print(f"driver_pid={os.getpid()}")
    spark.stop()


if __name__ == "__main__":
    main()
