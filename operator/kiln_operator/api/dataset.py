"""Dataset: a versioned, validated reference to tabular data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import defaulted, ApiModel, LocalObjectReference, StatusBase, cel, validations

ColumnType = Literal["number", "integer", "category", "boolean"]


class Source(ApiModel):
    """Where the data lives."""

    uri: str = Field(pattern=r"^(s3|file|https?)://.+", max_length=2048)
    """Location of the data: `s3://bucket/key`, `file:///path` or `https://...`."""
    format: Literal["csv", "parquet"] = "csv"
    """File format of the data."""
    secret_ref: LocalObjectReference | None = None
    """Secret with the credentials for the source (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)."""


class Column(ApiModel):
    """The expected type and range of one column."""

    model_config = {
        "json_schema_extra": validations(
            cel("!has(self.min) || !has(self.max) || self.min <= self.max", "min must not exceed max", ".min"),
            cel("!has(self.allowed) || self.type == 'category'", "allowed applies only to category columns",
                ".allowed"),
            cel("!(has(self.min) || has(self.max)) || self.type in ['number', 'integer']",
                "min and max apply only to number and integer columns", ".type"),
        )
    }

    name: str = Field(min_length=1, max_length=256)
    """Column name as it appears in the data."""
    type: ColumnType
    """number, integer, category or boolean."""
    min: float | None = None
    """Smallest allowed value (number and integer columns)."""
    max: float | None = None
    """Largest allowed value (number and integer columns)."""
    allowed: list[str] | None = Field(default=None, max_length=1000)
    """Allowed values (category columns)."""
    nullable: bool = True
    """Whether missing values are allowed at all."""


class DataSchema(ApiModel):
    """Columns of the data; training derives its preprocessing from them."""

    columns: list[Column] = Field(
        min_length=1, max_length=1000,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """The columns, each with its type and constraints."""


class Checks(ApiModel):
    """Data quality checks run on every new version of the data."""

    min_rows: int = Field(default=1, ge=1)
    """Fewest rows the data must have."""
    max_null_fraction: float = Field(default=1.0, ge=0, le=1)
    """Largest fraction of missing values allowed in any column."""


class DatasetSpec(ApiModel):
    """Desired state of a Dataset."""

    model_config = {
        "json_schema_extra": validations(
            cel("!has(self.target) || self.schema.columns.exists(c, c.name == self.target)",
                "target must name a column of schema.columns", ".target"),
        )
    }

    source: Source
    """Where the data lives."""
    target: str | None = Field(default=None, min_length=1)
    """The label column models predict; the other columns are features."""
    data_schema: DataSchema = Field(alias="schema")
    """The expected columns."""
    checks: Checks = defaulted(Checks)
    """Quality checks."""


class CheckFailure(ApiModel):
    """One failed check, named with its column."""

    column: str | None = None
    """The column the check is about, when it is about one."""
    check: str
    """Which check failed, e.g. type, min, max, allowed, nullFraction, minRows."""
    message: str
    """What was found."""


class DatasetStatus(StatusBase):
    """Observed state of a Dataset."""

    version: str | None = None
    """sha256 of the data's content: the dataset version."""
    rows: int | None = None
    """Number of rows of this version."""
    profile_uri: str | None = None
    """Per-column statistics of this version: the drift baseline."""
    last_validated: str | None = None
    """When this version was validated (RFC 3339)."""
    failures: list[CheckFailure] = Field(default_factory=list)
    """Checks that failed, column by column."""
    validation_job: str | None = None
    """The Job that validated (or is validating) the data."""
