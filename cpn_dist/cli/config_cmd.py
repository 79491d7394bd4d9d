"""``cpn config``: show the fully resolved run configuration, list every key, or write the key reference."""

from __future__ import annotations

from rich.syntax import Syntax
from rich.table import Table

from cpn_dist.cli import add_command, console, output_file, print_table


def register(sub) -> None:
    p = add_command(sub, "config", "inspect run configurations")
    cfg_sub = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    show = add_command(cfg_sub, "show", "print a config with every default filled in (YAML)")
    show.add_argument("config", nargs="?", help="YAML config file (omit for the defaults)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=0.02")
    show.set_defaults(handler=_show)
    keys = add_command(cfg_sub, "keys", "list every config key with its default and meaning")
    keys.set_defaults(handler=_keys)
    docs = add_command(cfg_sub, "docs", "write the configuration reference (markdown) generated from the schemas")
    docs.add_argument("--out", metavar="FILE", help="write it to FILE (e.g. docs/configuration.md) instead of stdout")
    docs.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from what would be written")
    docs.set_defaults(handler=_docs)


def _show(args) -> int:
    from cpn_dist.config.load import load_config
    from cpn_dist.config.run import to_yaml

    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # `cpn config show optim.lr=0.1`
        config_path, overrides = None, [config_path, *overrides]
    text = to_yaml(load_config(config_path, overrides))
    if console.is_terminal:
        console.print(Syntax(text, "yaml", background_color="default"))
    else:
        console.print(text, end="", highlight=False, markup=False, soft_wrap=True)
    return 0


def _keys(args) -> int:
    from cpn_dist.config.run import key_docs

    table = Table("key", "default", "meaning", title="cpn-dist config keys")
    for key, default, doc in key_docs():
        table.add_row(key, default, doc)
    print_table(table)
    return 0


def _docs(args) -> int:
    from pathlib import Path

    from cpn_dist.config.docs import config_reference
    from cpn_dist.errors import CpnError

    text = config_reference()
    if args.check is not None:
        path = Path(args.check)
        if not path.is_file() or path.read_text() != text:
            raise CpnError(f"{path} is stale: regenerate it with `cpn config docs --out {path}`")
        console.print(f"{path} is up to date", highlight=False)
        return 0
    out = output_file(args.out, "--out")
    if out is not None:
        out.write_text(text)
        console.print(f"wrote {out}", highlight=False)
        return 0
    print(text, end="")
    return 0
