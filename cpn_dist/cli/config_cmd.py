"""``cpn config``: show the fully resolved run configuration, or list every key."""

from __future__ import annotations

from rich.syntax import Syntax
from rich.table import Table

from cpn_dist.cli import add_command, console


def register(sub) -> None:
    p = add_command(sub, "config", "inspect run configurations")
    cfg_sub = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    show = add_command(cfg_sub, "show", "print a config with every default filled in (YAML)")
    show.add_argument("config", nargs="?", help="YAML config file (omit for the defaults)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=0.02")
    show.set_defaults(handler=_show)
    keys = add_command(cfg_sub, "keys", "list every config key with its default and meaning")
    keys.set_defaults(handler=_keys)


def _show(args) -> int:
    from cpn_dist.config import load_config, to_yaml

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
    from cpn_dist.config import key_docs

    table = Table("key", "default", "meaning", title="cpn-dist config keys")
    for key, default, doc in key_docs():
        table.add_row(key, default, doc)
    console.print(table)
    return 0
