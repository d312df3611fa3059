"""Venue registry: venue name -> its module, all with the same face.

A venue module provides:

- `DEFAULT_BASE_URL: str` and `RATE_LIMIT: tuple[int, float]` (requests per seconds,
  the venue's documented limit for one key);
- `async def fetch(http: VenueClient, source: SourceConfig) -> list[RawResponse]`:
  the signed request(s) of one poll, each response envelope-checked;
- `def normalize(source: str, responses: Sequence[RawResponse]) -> Batch`: pure, no I/O;
  the same responses always give the same records (that is what makes replay work).

Modules are imported on first use, so a bad venue module cannot break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from etl.config import SourceConfig
    from etl.records import Batch, RawResponse
    from etl.venues.http import VenueClient


class VenueModule(Protocol):
    DEFAULT_BASE_URL: str
    RATE_LIMIT: tuple[int, float]

    async def fetch(self, http: VenueClient, source: SourceConfig) -> list[RawResponse]: ...

    def normalize(self, source: str, responses: Sequence[RawResponse]) -> Batch: ...


@dataclass(frozen=True)
class VenueInfo:
    name: str
    signed: bool  # needs api_secret besides api_key

    def module(self) -> VenueModule:
        mod: ModuleType = importlib.import_module(f"etl.venues.{self.name}")
        return cast(VenueModule, mod)


VENUES: dict[str, VenueInfo] = {
    "htx": VenueInfo("htx", signed=True),
    "bittap": VenueInfo("bittap", signed=True),
    "ltp": VenueInfo("ltp", signed=True),
    "treadfi": VenueInfo("treadfi", signed=False),
}


def venue(name: str) -> VenueModule:
    return VENUES[name].module()
