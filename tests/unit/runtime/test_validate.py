import io

import numpy as np
import pandas as pd
import pytest

from kiln_runtime.train import spec, tables, validate
from kiln_runtime.train.errors import InvalidData


def _spec(columns, target=None, **checks) -> spec.DatasetSpec:
    return spec.parse_dataset({"source": {"uri": "file:///x.csv"}, "target": target,
                               "schema": {"columns": columns}, "checks": checks})


def _csv(text: str) -> pd.DataFrame:
    return tables.parse_table(text.encode(), "csv")


def _checks(failures):
    return {(f.column, f.check) for f in failures}


def test_a_clean_table_is_typed_by_the_schema():
    raw = _csv("x,n,c,b\n1.5,2,a,true\n,3,,no\n2.5,4,b,1\n")
    typed, failures = validate.validate(raw, _spec([
        {"name": "x", "type": "number"}, {"name": "n", "type": "integer"},
        {"name": "c", "type": "category", "allowed": ["a", "b"]}, {"name": "b", "type": "boolean"}]))
    assert failures == []
    assert typed["x"].dtype == np.float64 and np.isnan(typed["x"][1])
    assert typed["n"].tolist() == [2.0, 3.0, 4.0]
    assert typed["c"].tolist() == ["a", None, "b"]
    assert typed["b"].tolist() == [1.0, 0.0, 1.0]


def test_each_failure_names_its_column_and_the_first_offending_row():
    raw = _csv("x,n,c,b,z\n1,2,a,true,1\nabc,2.5,q,maybe,\n-5,3,a,false,\n")
    _, failures = validate.validate(raw, _spec([
        {"name": "x", "type": "number", "min": 0}, {"name": "n", "type": "integer", "max": 2},
        {"name": "c", "type": "category", "allowed": ["a"]}, {"name": "b", "type": "boolean"},
        {"name": "z", "type": "number", "nullable": False}, {"name": "gone", "type": "number"}],
        maxNullFraction=0.5, minRows=5))
    assert _checks(failures) == {("x", "type"), ("x", "min"), ("n", "type"), ("n", "max"), ("c", "allowed"),
                                 ("b", "type"), ("z", "nullable"), ("z", "nullFraction"), ("gone", "present"),
                                 (None, "minRows")}
    by = {(f.column, f.check): f.message for f in failures}
    assert by[("x", "type")] == "column x: 1 value(s) are not numbers, first 'abc' at row 2"
    assert "'2.5' at row 2" in by[("n", "type")]
    assert "'q'" in by[("c", "allowed")] and "'maybe'" in by[("b", "type")]
    assert by[(None, "minRows")] == "the data has 3 row(s); at least 5 required"
    assert validate.summarize(failures).endswith("(and 9 more failed checks)")


def test_missing_target_and_unlabelled_rows():
    _, failures = validate.validate(_csv("a\n1\n"), _spec([{"name": "a", "type": "number"},
                                                             {"name": "y", "type": "category"}], target="y"))
    assert [(f.column, f.check) for f in failures] == [("y", "target")]
    assert "target column y is missing from the data" in failures[0].message
    _, failures = validate.validate(_csv("a,y\n1,u\n2,\n"), _spec([{"name": "a", "type": "number"},
                                                                    {"name": "y", "type": "category"}], target="y"))
    assert [(f.column, f.check) for f in failures] == [("y", "target")] and "row 2" in failures[0].message


def test_infinite_and_blank_values():
    typed, failures = validate.validate(_csv("x,y\ninf,1\n  ,2\n3,3\n"), _spec([{"name": "x", "type": "number"}]))
    assert _checks(failures) == {("x", "type")} and np.isnan(typed["x"][1]) and typed["x"][2] == 3.0
    assert "'inf' at row 1" in failures[0].message


def test_parquet_keeps_native_types_and_categories_read_alike():
    frame = pd.DataFrame({"x": [1.0, None, 3.0], "c": [1, 2, 1], "b": [True, False, None]})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    raw = tables.parse_table(buf.getvalue(), "parquet")
    typed, failures = validate.validate(raw, _spec([{"name": "x", "type": "number"},
                                                     {"name": "c", "type": "category", "allowed": ["1", "2"]},
                                                     {"name": "b", "type": "boolean"}]))
    assert failures == [] and typed["c"].tolist() == ["1", "2", "1"] and typed["b"].tolist()[:2] == [1.0, 0.0]


def test_unreadable_files_are_invalid_data():
    with pytest.raises(InvalidData, match="not a readable parquet file"):
        tables.parse_table(b"not parquet", "parquet", "file:///d.parquet")
