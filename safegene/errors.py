"""What the user sees: SafeGeneError for bad input (not a bug; the CLI prints one line, exit 2) and
SafeGeneWarning (one line too)."""


class SafeGeneError(Exception):
    """An error caused by the user's input (paths, files, data, pairings, options).

    Raise it with a message that names the offending thing and, where it helps, how to fix it.
    Anything else that escapes is a bug and is reported as one.
    """


class SafeGeneWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`timeout`, `docker stop`, Slurm, Kubernetes, a closed terminal),
    raised like Ctrl-C's KeyboardInterrupt so that every clean-up that runs for SIGINT runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
