"""The terminal of `synapse-pypi run`: which of Synapse's log records need a person.

`synapse-pypi run` writes a log config that sends Synapse's whole log to a file under the data
directory and only warnings and errors to the terminal, through this filter (Synapse imports
it by its dotted name). Pure logging: no Synapse or Twisted imports.
"""

import logging

#: Loggers whose warnings are not news: Synapse's log-context accounting, which warns on every
#: event sent while a module has callbacks registered (element-hq/synapse#13366), and its
#: start-up banner (version, copyright, licence), which it logs as warnings.
QUIET_LOGGERS = ("synapse.logging.context", "synapse.config.logger")
#: Warnings that are part of a normal start: the one a module causes when it checks whether
#: its bot user exists yet.
QUIET_MESSAGES = ("but they do not exist",)


class NeedsAPerson(logging.Filter):
    """Passes what someone watching the terminal should act on; the rest goes to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(QUIET_LOGGERS):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: show it as it is
            return True
        return not any(quiet in message for quiet in QUIET_MESSAGES)
