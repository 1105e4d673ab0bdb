"""Request rows -> model matrix: strict types at C speed, a precise message for the first bad value."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kiln_runtime.serve import signature
from kiln_runtime.serve.errors import BadRequest, ClientError
from kiln_runtime.serve.rows import numeric_matrix, object_matrix, rows_from_objects

from conftest import MIXED, numeric_signature


def test_numbers_and_integers_become_a_float_matrix(sig20):
    rows = [[float(i) for i in range(20)], list(range(20))]
    x = numeric_matrix(rows, sig20, "instances")
    assert x.dtype == np.float64 and x.shape == (2, 20)
    np.testing.assert_array_equal(x[1], np.arange(20))


@pytest.mark.parametrize("value, message", [
    (True, "expected a number, got a boolean"),
    ("1.5", "expected a number, got a string"),
    (None, "null is not allowed"),
    ([1.0], "expected a number, got an array"),
    ({"a": 1}, "expected a number, got an object"),
])
def test_a_wrong_value_is_named_with_its_position_and_feature(sig20, value, message):
    rows = [[0.0] * 20, [0.0] * 20]
    rows[1][7] = value
    with pytest.raises(BadRequest, match=r"instances\[1\]\[7\] \(feature 'f7'\): " + message):
        numeric_matrix(rows, sig20, "instances")


def test_a_short_row_names_its_length_and_the_features(sig20):
    with pytest.raises(BadRequest, match=r"instances\[0\] has 3 values; the model takes 20 features"):
        numeric_matrix([[1, 2, 3]], sig20, "instances")


def test_a_flat_list_is_not_a_list_of_rows(sig20):
    with pytest.raises(BadRequest, match=r"instances\[0\] must be an array of 20 feature values"):
        numeric_matrix([1.0] * 20, sig20, "instances")


def test_integer_features_refuse_fractions_and_huge_values():
    sig = numeric_signature(3, integer=(1,))
    assert numeric_matrix([[0.5, 2.0, 1]], sig, "r").tolist() == [[0.5, 2.0, 1.0]]
    with pytest.raises(BadRequest, match=r"feature 'f1'\): expected an integer, got a number 2.5"):
        numeric_matrix([[0.5, 2.5, 1]], sig, "r")
    with pytest.raises(BadRequest, match="out of range"):
        numeric_matrix([[0.5, 2, 10 ** 400]], sig, "r")


def test_null_becomes_nan_only_where_the_signature_allows_it():
    sig = numeric_signature(3, nullable=(2,))
    x = numeric_matrix([[1.0, 2.0, None]], sig, "r")
    assert np.isnan(x[0, 2])
    with pytest.raises(BadRequest, match=r"r\[0\]\[0\] \(feature 'f0'\): null is not allowed"):
        numeric_matrix([[None, 2.0, 3.0]], sig, "r")


def test_missing_in_signature_makes_its_types_nullable():
    sig = signature.parse({"inputs": [{"name": "a", "type": "number"}, {"name": "b", "type": "category"}],
                           "output": {"type": "label"}, "missing": {"number": "NaN", "category": "?"}})
    assert all(f.nullable for f in sig.features) and sig.missing_category == "?"


def test_objects_keyed_by_feature_name_follow_the_signature_order():
    sig = numeric_signature(3)
    assert rows_from_objects([{"f2": 3, "f0": 1, "f1": 2}], sig, "instances") == [(1, 2, 3)]
    with pytest.raises(BadRequest, match="missing feature 'f2'; unknown feature 'zz'"):
        rows_from_objects([{"f0": 1, "f1": 2, "zz": 3}], sig, "instances")
    with pytest.raises(BadRequest, match=r"instances\[1\] is an array, but instances\[0\] is an object"):
        rows_from_objects([{"f0": 1, "f1": 2, "f2": 3}, [1, 2, 3]], sig, "instances")


def test_mixed_signatures_check_every_value():
    sig = signature.parse(MIXED)
    x = object_matrix([[30, None, "red", True], [41.0, 1.5, "blue", False]], sig, "instances")
    assert x.tolist() == [[30, None, "red", True], [41, 1.5, "blue", False]]
    with pytest.raises(BadRequest, match=r"feature 'colour'\): expected a string \(category\), got an integer"):
        object_matrix([[30, 1.0, 3, True]], sig, "instances")
    with pytest.raises(BadRequest, match=r"feature 'member'\): expected a boolean, got an integer"):
        object_matrix([[30, 1.0, "red", 1]], sig, "instances")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(json_values, min_size=0, max_size=22) | json_values, max_size=4))
def test_any_json_rows_give_a_matrix_or_a_client_error(rows):
    sig = numeric_signature(20, integer=(3,), nullable=(5,))
    try:
        x = numeric_matrix(rows, sig, "instances")
    except ClientError:
        return
    assert x.shape == (len(rows), 20)
