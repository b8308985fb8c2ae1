"""The errors a user can act on. Each message alone says what to fix, naming the file or the
dotted setting; the command line prints it as one line and exits with status 2 (selfsup/cli.py).
Any other exception is a bug in selfsup and keeps its traceback."""


class SelfsupError(Exception):
    """Base of the errors above: bad settings, data, files or run folders, a diverged run."""


class ConfigError(SelfsupError, ValueError):
    """A recipe or override that cannot be used; the message names the key."""
