"""The folder partitions shared by every split's rows, and their registration."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
import sqlalchemy.exc

PARTITIONS_NAME = "lsvq_folders"
folder_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


def register_partitions(instance: dg.DagsterInstance, keys: Iterable[str]) -> list[str]:
    """Add the partition keys the instance does not know yet; return the new ones. Idempotent.

    Safe beside another process registering the same keys (the sensor, a UI run, another CLI):
    the instance refuses a key twice (unique index), so when one was added between our read
    and our insert the insert fails as a whole, and we read again and add what is still missing.
    """
    wanted = list(dict.fromkeys(keys))
    for attempt in range(5):
        known = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        new = [k for k in wanted if k not in known]
        if not new:
            return []
        try:
            instance.add_dynamic_partitions(PARTITIONS_NAME, new)
            return new
        except sqlalchemy.exc.IntegrityError:
            if attempt == 4:
                raise
    return []  # pragma: no cover
