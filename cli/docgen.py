"""Generate docs/cli.md from the commands' --help, so the reference cannot drift.

    python -m histstore.cli.docgen > docs/cli.md      (tests/test_docs.py checks it is current)
"""
from __future__ import annotations

import click

from histstore.cli.main import main


def _walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=path[-1])
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), path + [name])


def all_commands() -> list[tuple[list[str], click.Command]]:
    return list(_walk(main, ["histstore"]))


def render() -> str:
    out = ["# CLI reference", "",
           "Generated from `--help` by `python -m histstore.cli.docgen > docs/cli.md`; a test keeps it current.",
           ""]
    for path, cmd in all_commands():
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                            help_option_names=["-h", "--help"])
        title = " ".join(path)
        out += [f"## `{title}`", "", "```", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
