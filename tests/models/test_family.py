"""ModelFamily: the one list of SD families."""

from __future__ import annotations

from typing import get_args

from genmodels.models.family import MODEL_FAMILIES, ModelFamily


def test_families() -> None:
    assert MODEL_FAMILIES == get_args(ModelFamily) == ("sd1", "sd2", "sdxl-base", "sdxl-refiner")
