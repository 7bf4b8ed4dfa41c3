pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.loopfs",
    "tests.fixtures.zfs",
    "tests.fixtures.mergerfs",
    "tests.fixtures.daemon",
]
