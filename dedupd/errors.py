"""Exceptions that map to the exit codes documented in README.md ("Exit status")."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: try again later
EXIT_CONFIG = 78  # EX_CONFIG: systemd should not restart-loop on it


class DedupdError(Exception):
    """Base class: an error with a message meant for the user and an exit code."""

    exit_code = EXIT_FAILURE


class UsageError(DedupdError):
    exit_code = EXIT_USAGE


class ConfigError(DedupdError):
    """A config problem, always naming the file, the key and what is wrong."""

    exit_code = EXIT_CONFIG

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


class TemporaryFailure(DedupdError):
    """Something outside us is not ready (lock held, endpoint down): retry later."""

    exit_code = EXIT_TEMPFAIL


def one_line(message: str) -> str:
    """message as one line for a terminal: a control character (a newline, ESC, a
    C1 such as CSI, in a file name an error quotes) escaped as output.show_path
    shows names, never a line of its own or a terminal sequence."""
    if message.isprintable():
        return message
    # only here: output imports json and re, start-up cost a clean error never pays
    from dedupd.output import show_path

    return show_path(message)
