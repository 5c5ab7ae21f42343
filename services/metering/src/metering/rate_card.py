"""The versioned rate card: what each model costs us per million tokens, and our markup.

Cards are data files shipped in the package (``rate_cards/<version>.json``), prices as
decimal strings so no float ever touches a rate. The card in force is the newest one whose
``effectiveFrom`` has come, unless a version is pinned; a card can therefore be shipped
ahead of its date and takes over on that day without a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources

from billing_platform.errors import ApiError
from pydantic import BaseModel, ConfigDict, Field

_DECIMAL = r"^\d+(\.\d+)?$"


@dataclass(frozen=True)
class ModelRate:
    model: str
    input_usd_per_1m: Decimal
    output_usd_per_1m: Decimal
    markup: Decimal


@dataclass(frozen=True)
class RateCard:
    version: str
    effective_from: date
    default_markup: Decimal
    rates: tuple[ModelRate, ...]

    @property
    def known_models(self) -> list[str]:
        return [r.model for r in self.rates]

    def rate_for(self, model: str) -> ModelRate:
        """The model's rate; 422 ``unknown_model`` naming the known models otherwise."""
        for rate in self.rates:
            if rate.model == model:
                return rate
        raise ApiError(
            422,
            "unknown_model",
            f"unknown model: {model[:64]}",
            knownModels=self.known_models,
        )


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    inputUsdPer1M: str = Field(pattern=_DECIMAL)
    outputUsdPer1M: str = Field(pattern=_DECIMAL)
    markup: str | None = Field(default=None, pattern=_DECIMAL)


class _CardFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    effectiveFrom: date
    defaultMarkup: str = Field(pattern=_DECIMAL)
    models: list[_ModelEntry] = Field(min_length=1)


def parse_rate_card(text: str) -> RateCard:
    """A card from its JSON; ValueError when a price or markup is missing, a float, or zero."""
    raw = _CardFile.model_validate_json(text)
    default = Decimal(raw.defaultMarkup)
    rates = tuple(_rate(entry, default) for entry in raw.models)
    if len({r.model for r in rates}) != len(rates):
        raise ValueError(f"rate card {raw.version}: a model is listed twice")
    if any(v <= 0 for r in rates for v in (r.input_usd_per_1m, r.output_usd_per_1m, r.markup)):
        raise ValueError(f"rate card {raw.version}: prices and markups must be positive")
    return RateCard(raw.version, raw.effectiveFrom, default, rates)


def _rate(entry: _ModelEntry, default_markup: Decimal) -> ModelRate:
    markup = Decimal(entry.markup) if entry.markup is not None else default_markup
    return ModelRate(
        entry.model, Decimal(entry.inputUsdPer1M), Decimal(entry.outputUsdPer1M), markup
    )


def load_rate_cards(package: str = "metering") -> list[RateCard]:
    """Every card shipped in ``<package>/rate_cards``, oldest first."""
    folder = resources.files(package).joinpath("rate_cards")
    cards = [
        parse_rate_card(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    ]
    if len({c.version for c in cards}) != len(cards):
        raise ValueError("two rate cards share a version")
    return sorted(cards, key=lambda c: (c.effective_from, c.version))


def _today() -> date:
    return datetime.now(UTC).date()


class RateCardBook:
    """Picks the card in force; checked at construction so a bad pin fails at startup."""

    def __init__(
        self,
        cards: Sequence[RateCard],
        pinned_version: str | None = None,
        today: Callable[[], date] = _today,
    ) -> None:
        self._cards = list(cards)
        self._pinned = pinned_version
        self._today = today
        self.current()

    def current(self) -> RateCard:
        if self._pinned:
            return self._by_version(self._pinned)
        in_force = [c for c in self._cards if c.effective_from <= self._today()]
        if not in_force:
            raise LookupError("no rate card is in effect yet")
        return max(in_force, key=lambda c: (c.effective_from, c.version))

    def _by_version(self, version: str) -> RateCard:
        for card in self._cards:
            if card.version == version:
                return card
        known = ", ".join(c.version for c in self._cards)
        raise LookupError(f"rate card {version!r} is not shipped (known: {known})")
