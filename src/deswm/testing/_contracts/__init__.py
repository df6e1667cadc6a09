"""Contract test suites: mixin classes an implementation runs against itself.

One class per protocol, in the style of fsspec's abstract tests: subclass it in a
``Test*`` class, override its factory fixture, and pytest runs every clause of the
protocol against your implementation. Needs ``pytest`` and ``hypothesis``.
"""

from deswm.testing._contracts.packer import MakePacker, PackerContract
from deswm.testing._contracts.reader import FileReaderContract, MakeReader
from deswm.testing._contracts.router import ShardRouterContract
from deswm.testing._contracts.source import MakeSource, SourceProviderContract
from deswm.testing._contracts.store import WatermarkStoreContract

__all__ = [
    "FileReaderContract",
    "MakePacker",
    "MakeReader",
    "MakeSource",
    "PackerContract",
    "ShardRouterContract",
    "SourceProviderContract",
    "WatermarkStoreContract",
]
