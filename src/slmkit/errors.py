"""The one exception type users see.

Every error caused by input (a path, a value, a file's contents) is raised as `SlmkitError`
with a message that names the input and says what to do. The CLI prints the message alone
(no traceback unless `--debug`) and exits non-zero.
"""


class SlmkitError(Exception):
    """A problem with the user's input or environment, explained in the message."""
