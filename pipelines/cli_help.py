"""Help text shared by every subcommand: each flag's default, where it has one worth showing.

argparse's ArgumentDefaultsHelpFormatter appends "(default: None)" and "(default: False)" to flags
whose default means "not set" or "off"; this one appends a default only when it is a real value
and the help text does not already say it.
"""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default == argparse.SUPPRESS
            or "default" in text.lower()
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"
