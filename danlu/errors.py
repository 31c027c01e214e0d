"""The one exception type a user sees.

Every error caused by the user's input (a bad file, a bad option, a bad checkpoint) is a `DanluError`
whose message says what was wrong, with the value, and what to do. The CLI prints it without a traceback.
"""


class DanluError(Exception):
    """A user-actionable error: the message names the bad input and the fix."""
