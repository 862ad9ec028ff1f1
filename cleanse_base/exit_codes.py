"""Process exit codes, for CI gates (the same for scan, convert, mitigate and audit)."""

EXIT_CLEAN = 0  # no backdoor found (or: the command did what it was asked)
EXIT_INFECTED = 1  # a backdoor was found
EXIT_ERROR = 2  # the command could not be done, or the verdict is inconclusive

CLEAN, INFECTED, INCONCLUSIVE = "clean", "infected", "inconclusive"  # a scan's verdicts
VERDICT_EXIT = {CLEAN: EXIT_CLEAN, INFECTED: EXIT_INFECTED, INCONCLUSIVE: EXIT_ERROR}
