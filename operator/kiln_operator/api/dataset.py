"""Dataset: a versioned, validated reference to tabular data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import defaulted, ApiModel, LocalObjectReference, PodSettings, StatusBase, cel, validations

ColumnType = Literal["number", "integer", "category", "boolean"]


class Source(ApiModel):
    """Where the data lives."""

    model_config = {"json_schema_extra": validations(
        cel("!has(self.checkIntervalSeconds) || self.uri.startsWith('s3://') || self.uri.startsWith('file://')",
            "checkIntervalSeconds needs an s3:// or file:// source: only those can be listed", ".checkIntervalSeconds"),
    )}

    uri: str = Field(pattern=r"^(s3|file|https?)://.+", max_length=2048)
    """Location of the data: `s3://bucket/key`, `file:///path` or `https://...`. A URI ending in `/` is a
    prefix: every `.csv` and `.parquet` file below it, oldest first, read as one table."""
    format: Literal["csv", "parquet"] = "csv"
    """File format of a single-file source (a prefix's files are read by their extension)."""
    check_interval_seconds: int | None = Field(default=None, ge=10, le=7 * 24 * 3600)
    """How often the operator lists the source (names, sizes, ETags: never a download) and validates a new
    version when something changed; unset: only on a spec change or the `kiln.dev/refresh` annotation."""
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


class Window(ApiModel):
    """Which part of the data training sees: the newest rows or the newest days."""

    model_config = {"json_schema_extra": validations(
        cel("has(self.rows) != has(self.days)", "set exactly one of rows and days", ".rows"),
        cel("!has(self.days) || has(self.timestampColumn)", "days needs timestampColumn", ".timestampColumn"),
    )}

    rows: int | None = Field(default=None, ge=1)
    """Keep the newest N rows (the last rows of the newest files)."""
    days: float | None = Field(default=None, gt=0)
    """Keep the rows within N days of the newest timestamp in the data."""
    timestamp_column: str | None = Field(default=None, min_length=1, max_length=256)
    """The column holding each row's time (RFC 3339 or epoch seconds); it need not be in the schema."""


class Retention(ApiModel):
    """How many data versions keep their snapshot in the artifact store."""

    versions: int = Field(default=10, ge=1, le=1000)
    """The newest N versions are kept, and every version a ModelVersion was trained on, while it exists."""


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
    window: Window | None = None
    """Train on the newest rows or days only; unset: all of the data."""
    retention: Retention = defaulted(Retention)
    """How many data versions are kept."""
    pod: PodSettings | None = None
    """ServiceAccount, node selector, tolerations, labels and annotations of the validation Job's pod."""


class CheckFailure(ApiModel):
    """One failed check, named with its column."""

    column: str | None = None
    """The column the check is about, when it is about one."""
    check: str
    """Which check failed, e.g. type, min, max, allowed, nullFraction, minRows."""
    message: str
    """What was found."""


class DataVersion(ApiModel):
    """One validated, immutable version of the data."""

    version: str
    """Content address of the version (sha256)."""
    rows: int | None = None
    """Rows of this version (after the window)."""
    snapshot_uri: str | None = None
    """The validated table as Parquet: what trials read, never the moving source."""
    snapshot_sha256: str | None = None
    """sha256 of the snapshot file."""
    validated_at: str | None = None
    """When this version was first validated (RFC 3339)."""


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
    snapshot_uri: str | None = None
    """The snapshot of the current version."""
    snapshot_sha256: str | None = None
    """sha256 of that snapshot."""
    versions: list[DataVersion] = Field(default_factory=list)
    """The versions kept, oldest first: any of them can be trained on again (TrainingPipeline datasetVersion)."""
    source_fingerprint: str | None = None
    """Digest of the source's last listing (names, sizes, ETags): a change starts a validation."""
    last_refresh: str | None = None
    """The last `kiln.dev/refresh` value a finished validation answered."""
