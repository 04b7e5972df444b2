"""docs/config.md, generated: every config key, then every algorithm's options.

Apart from ``config`` (the schemas): what the page says is derived from them here, so
the schema file holds only what a config is."""

from __future__ import annotations

from typing import Any

from . import knobs
from .catalog import list_algorithms, options_of, preset_of
from .config import ExperimentConfig
from .plugins import origin


def schema_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """Every config key as (dotted key, default, type, help)."""
    return knobs.schema_keys(cls, prefix)


def reference_markdown(plugins: bool = False) -> str:
    """docs/config.md's tables: every config key, then each built-in algorithm's options
    (checked by a test), and with ``plugins`` those of the imported plugins too — so the
    page does not change with what else this process happens to have imported."""
    out = [knobs.markdown_table(schema_keys()), "\n## Algorithm options\n\n"
           "Set as `algorithm.options.KEY=VALUE`; a preset (an ablation) fixes some of "
           "its family's options, shown with it.\n"]
    seen: dict[type, str] = {}
    for name in list_algorithms():
        if not plugins and origin("algorithms", name) != "built-in":
            continue
        opts, preset = options_of(name), preset_of(name)
        if opts in seen and not preset:
            out.append(f"\n### `{name}`\n\nThe options of `{seen[opts]}`.\n")
            continue
        if preset:
            fixed = ", ".join(f"`{k}={v!r}`" for k, v in preset.items())
            out.append(f"\n### `{name}`\n\nThe options of `{seen.get(opts, '?')}` with "
                       f"{fixed}.\n")
            continue
        seen[opts] = name
        rows = knobs.schema_keys(opts)
        out.append(f"\n### `{name}`\n\n" + (knobs.markdown_table(rows) if rows
                                               else "No options.\n"))
    return "".join(out)
