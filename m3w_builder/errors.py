"""Errors that are a user's mistake, not a bug: a missing input, an output path that is a file, an
input that can never yield a document.

Library code raises these (typed, with a message that names the path and what to do); only the CLI
layer (pipelines/cli.py) turns them into one line on stderr and exit status 2, with the traceback
shown only under `--debug` / `--log-level DEBUG`. Anything else escaping a command is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message is the whole story, in one line."""

    exit_code = 2  # the CLI's exit status: a usage error, as argparse's


class RunFailed(UserError):
    """Work that did not finish and can be retried as it is (units that failed after retries, a
    leftover process to stop first): finished work is kept, the same command continues."""

    exit_code = 1


class InputError(UserError):
    """An input path that does not exist or can never yield anything (an empty folder, a PNG)."""


class OutputError(UserError):
    """An output path that cannot be used (a file where a folder is needed, a folder not empty)."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work: an unknown field (a typo), a bad choice, a
    combination that defeats itself. Also a ValueError, which library callers may catch."""
