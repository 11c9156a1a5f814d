"""A local Spark Connect server for the tests: ``python connect_server.py PORT``.

A separate process with its own JVM, like a real Connect deployment; it prints READY once the
gRPC endpoint listens and runs until it is killed.
"""

import os
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from pyspark.sql import SparkSession  # noqa: E402

session = (SparkSession.builder.master("local[2]").appName("distkeras-connect-tests")
           .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
           .config("spark.connect.grpc.binding.address", "127.0.0.1")
           .config("spark.connect.grpc.binding.port", sys.argv[1])
           .config("spark.ui.enabled", "false")
           .config("spark.driver.host", "127.0.0.1")
           .config("spark.driver.bindAddress", "127.0.0.1")
           .getOrCreate())
session.sparkContext.setLogLevel("ERROR")
print("READY", flush=True)
while True:
    time.sleep(1)
