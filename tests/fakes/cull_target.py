"""A stand-in for the kernel manager as :class:`KCRCuller` sees it (``CullTarget``)."""

from __future__ import annotations


class RecordStoreDouble:
    """Answers ``list_kernels`` from a list of registry records."""

    def __init__(self, records: list[dict]):
        self.records = records

    async def list_kernels(self) -> list[dict]:
        return list(self.records)


class CullTargetDouble:
    """No attached kernels; hibernated records in a store double; removals recorded."""

    def __init__(self, records: list[dict]):
        self.store = RecordStoreDouble(records)
        self.removed: list[str] = []

    def attached_kernels(self):
        return []

    async def remove(self, kernel_id: str) -> None:
        self.removed.append(kernel_id)
        self.store.records = [r for r in self.store.records if r["id"] != kernel_id]
