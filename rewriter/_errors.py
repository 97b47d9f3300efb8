"""The rewriter's errors: nothing is written when one is raised."""


class RewriteError(Exception):
    """A model that cannot be read, rewritten or written; the message says why."""


class AlreadyRewritten(RewriteError):
    """The input holds our ops and no attention core left to rewrite: nothing to do."""
