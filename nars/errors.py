"""The one exception type for mistakes a user can fix (bad config, file, argument).

The CLI prints it as a single line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, stated in one line that names the file or key."""
