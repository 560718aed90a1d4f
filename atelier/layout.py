"""Source layouts: which raw columns are inputs and which are target attributes.

A layout is declared in YAML (`atelier/layouts/<name>.yaml`, or a folder named by the
`layouts_dir` setting) so a new source needs a config file, not code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_DIR = Path(__file__).parent / "layouts"


class Constant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    constant: str


class WordsBefore(BaseModel):
    """The words of column `from` before the first of `words_before` (all of it if none)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    words_before: list[str]


Source = Union[str, Constant, WordsBefore, None]


class ProductsMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Source
    division: Source = None
    brand: Source
    title: Source = None
    description: Source = None
    price: Source = None


class CustomersMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    age: Source = None
    club_member_status: Source = None
    fashion_news_frequency: Source = None
    postal_code: Source = None


class InteractionsMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: str
    product: str
    timestamp: str
    timestamp_format: str = "yyyy-MM-dd HH:mm:ss"
    price: Source = None
    channel: Source = None
    kind: Source = Field(default_factory=lambda: Constant(constant="purchase"))


class Files(BaseModel):
    model_config = ConfigDict(extra="forbid")
    products: str
    customers: str | None = None
    interactions: str | None = None


class Layout(BaseModel):
    """A parsed layout config."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    files: Files
    missing_values: list[str] = Field(default_factory=lambda: [""])
    products: ProductsMap
    images: list[str] = Field(default_factory=list)
    attributes: list[str] = Field(default_factory=list)
    customers: CustomersMap | None = None
    interactions: InteractionsMap | None = None

    @field_validator("images")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        for t in v:
            if "{id" not in t:
                raise ValueError(f"image template {t!r} does not mention {{id}}")
        return v

    def source_columns(self, table: str) -> set[str]:
        """Raw columns the layout reads for `table` (checked against the file's header)."""
        mapping = {
            "products": self.products,
            "customers": self.customers,
            "interactions": self.interactions,
        }[table]
        cols: set[str] = set()
        for name, value in mapping or []:
            if name == "timestamp_format":
                continue
            if isinstance(value, str):
                cols.add(value)
            elif isinstance(value, WordsBefore):
                cols.add(value.from_)
        if table == "products":
            cols.update(self.attributes)
        return cols


def available_layouts(layouts_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (layouts_dir or BUILTIN_DIR).glob("*.yaml"))


def load_layout(name: str, layouts_dir: Path | None = None) -> Layout:
    """Load layout `name`; raises ValueError listing the known layouts when absent."""
    folder = layouts_dir or BUILTIN_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown layout {name!r}; known: {available_layouts(folder)}")
    layout = Layout.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    if layout.name != name:
        raise ValueError(f"{path}: name {layout.name!r} does not match the file name")
    return layout
