"""SQL keywords that may not be used as table names (Polars SQL and common ANSI words)."""

from __future__ import annotations

RESERVED = frozenset(
    """
    all alter and any array as asc between both by case cast check collate column constraint
    create cross current current_date current_time current_timestamp default delete desc
    distinct drop else end except exists explain false fetch filter for foreign from full
    grant group having ilike in inner insert intersect interval into is join lateral leading
    left like limit natural not null nulls offset on or order outer over partition primary
    qualify references right rlike select semi anti set show similar some table then to
    trailing true truncate union unique unnest update user using values when where window
    with copy describe
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def is_reserved_word(name: str) -> bool:
    return name.lower() in RESERVED
