"""The slices partitions definition, shared by every per-slice asset, and their registration."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

SLICES_PARTITIONS_NAME = "lsvq_slices"
slices_partitions = dg.DynamicPartitionsDefinition(name=SLICES_PARTITIONS_NAME)


def register_slices(instance: dg.DagsterInstance, keys: Iterable[str]) -> list[str]:
    """Add the slice keys the instance does not know yet; return the new ones. Idempotent."""
    known = set(instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME))
    new = [k for k in dict.fromkeys(keys) if k not in known]
    if new:
        instance.add_dynamic_partitions(SLICES_PARTITIONS_NAME, new)
    return new
