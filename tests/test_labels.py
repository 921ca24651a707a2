import numpy as np
import pytest
import torch

from deepage.labels import get_scheme, list_schemes

UTK14_CASES = [(0, 0), (1, 0), (5, 0), (6, 1), (10, 1), (11, 2), (15, 2), (16, 3), (20, 3), (21, 4), (25, 4),
               (26, 5), (30, 5), (31, 6), (35, 6), (36, 7), (40, 7), (41, 8), (45, 8), (46, 9), (50, 9), (51, 10),
               (55, 10), (56, 11), (60, 11), (61, 12), (65, 12), (66, 13), (80, 13), (116, 13)]
UTK8_CASES = [(0, 0), (1, 0), (5, 0), (6, 1), (15, 1), (16, 2), (25, 2), (26, 3), (35, 3), (36, 4), (45, 4),
              (46, 5), (55, 5), (56, 6), (65, 6), (66, 7), (100, 7)]


@pytest.mark.parametrize(("age", "expected"), UTK14_CASES)
def test_utk14_boundaries(age, expected):
    scheme = get_scheme("utk14")
    assert int(scheme.classify(np.array([age]))[0]) == expected
    assert int(scheme.classify(torch.tensor([age]))[0]) == expected


@pytest.mark.parametrize(("age", "expected"), UTK8_CASES)
def test_utk8_boundaries(age, expected):
    scheme = get_scheme("utk8")
    assert int(scheme.classify(np.array([age]))[0]) == expected
    assert int(scheme.classify(torch.tensor([age]))[0]) == expected


def test_names():
    assert get_scheme("utk14").names == ("1-5", "6-10", "11-15", "16-20", "21-25", "26-30", "31-35", "36-40",
                                        "41-45", "46-50", "51-55", "56-60", "61-65", "66+")
    assert get_scheme("utk8").names == ("1-5", "6-15", "16-25", "26-35", "36-45", "46-55", "56-65", "66+")
    assert list_schemes() == ["utk14", "utk8"]


def test_custom_edges_and_roundtrip():
    scheme = get_scheme("0,13,20,40,60")
    assert scheme.names == ("0-12", "13-19", "20-39", "40-59", "60+")
    assert scheme.classify(np.array([12, 13, 19, 20, 59, 60, 99])).tolist() == [0, 1, 1, 2, 3, 4, 4]
    assert get_scheme(scheme.to_dict()) == scheme
    assert get_scheme(scheme.name) == scheme


def test_age_to_class_matrix_sums_mass():
    m = get_scheme("utk8").age_to_class_matrix()
    assert m.shape == (101, 8)
    assert m.dtype == np.float32 and np.all(m.sum(axis=1) == 1)
    assert m[15].argmax() == 1 and m[16].argmax() == 2


@pytest.mark.parametrize("bad", ["utk99", "1,x,3", [5, 5, 10], [10]])
def test_bad_schemes(bad):
    with pytest.raises(ValueError, match="label scheme|bin edges|integers|at least two"):
        get_scheme(bad)
