pytest_plugins = [
    "tests.fixtures.sigterm",  # SIGTERM (timeout, CI) tears fixtures down like Ctrl-C
    "tests.fixtures.postgres",
    "tests.fixtures.index",
    "tests.fixtures.loopfs",
    "tests.fixtures.zfs",
    "tests.fixtures.consolidate",
    "tests.fixtures.mergerfs",
    "tests.fixtures.daemon",
    "tests.fixtures.s3",
    "tests.fixtures.attacker",
    "tests.fixtures.impostor",
]
