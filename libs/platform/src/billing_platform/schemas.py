"""The base of every API body (snake_case in Python, camelCase on the wire) and the
constrained types every API's input shares."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

# PostgreSQL text cannot hold a NUL character: refused at the edge (422) and said so in the
# OpenAPI schema, rather than failing in the database.
NO_NUL_PATTERN = r"^[^\x00]*$"

# Free text that may reach the database: a body field, a query or a path parameter. Lengths
# stay with each use (``Text = Field(min_length=1, max_length=200)``).
Text = Annotated[str, StringConstraints(pattern=NO_NUL_PATTERN)]

# Amounts of millicredits an API accepts: a billion credits (US$1M) either way, far inside
# PostgreSQL's bigint, so no sum of a few of them overflows a balance.
MAX_AMOUNT_MILLICREDITS = 10**12


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The body as the API sends it (camelCase keys, JSON types)."""
        return self.model_dump(mode="json", by_alias=True)
