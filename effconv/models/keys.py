"""How a load refusal names the state_dict keys that differ: counts, and the first few of each kind."""

from __future__ import annotations

KEYS_NAMED = 3  # keys a load-refusal message names; a missing block has dozens


def listed_key_differences(missing, unexpected) -> str:
    """'5 missing (a, b, c, and 2 more), 1 unexpected (d)': the counts, naming the first few keys of each."""
    parts = []
    for kind, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            more = f", and {len(keys) - KEYS_NAMED} more" if len(keys) > KEYS_NAMED else ""
            parts.append(f"{len(keys)} {kind} ({', '.join(keys[:KEYS_NAMED])}{more})")
    return ", ".join(parts)
