"""The one exception type for problems a user can cause and fix."""


class AelabError(Exception):
    """A user-facing error: the message names the problem and the fix.

    The command-line tool prints the message on one line and exits with code 2
    (a traceback only with ``--debug``).
    """
