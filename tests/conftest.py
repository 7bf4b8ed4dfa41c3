pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.loopfs",
    "tests.fixtures.zfs",
    "tests.fixtures.s3",
]
