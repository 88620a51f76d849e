"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad label list, bad checkpoint...)."""
