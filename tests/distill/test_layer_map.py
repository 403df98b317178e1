import pytest

from workers.distill.errors import DistillError
from workers.distill.layer_map import layer_map


@pytest.mark.parametrize(
    ("kind", "n", "m", "expected"),
    [
        ("uniform", 12, 4, [3, 6, 9, 12]),
        ("uniform", 12, 6, [2, 4, 6, 8, 10, 12]),
        ("uniform", 6, 4, [2, 3, 5, 6]),  # N/M not whole: rounded, last meets last
        ("uniform", 2, 4, [1, 1, 2, 2]),  # a student deeper than its teacher
        ("top", 12, 4, [9, 10, 11, 12]),
        ("bottom", 12, 4, [1, 2, 3, 4]),
        ([1, 5, 12], 12, 3, [1, 5, 12]),
    ],
)
def test_layer_maps(kind: object, n: int, m: int, expected: list[int]) -> None:
    assert layer_map(kind, teacher_layers=n, student_layers=m) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "n", "m"), [("top", 2, 4), ([1, 13], 12, 2), ([1], 12, 2)])
def test_impossible_layer_maps_are_user_errors(kind: object, n: int, m: int) -> None:
    with pytest.raises(DistillError) as info:
        layer_map(kind, teacher_layers=n, student_layers=m)  # type: ignore[arg-type]
    assert info.value.code == "config_invalid"
