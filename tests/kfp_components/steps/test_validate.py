"""The validation rule, apart from MLflow."""
import pytest

from kfp_components.steps.validate import decide


def test_threshold_without_champion():
    assert decide(0.95, 0.9, None).accepted
    rejected = decide(0.85, 0.9, None)
    assert not rejected.accepted and "below min_accuracy 0.9000" in rejected.reason


def test_not_worse_than_champion():
    assert decide(0.95, 0.9, 0.95, champion_version="3").accepted
    worse = decide(0.93, 0.9, 0.97, champion_version="3")
    assert not worse.accepted and "worse than champion version 3" in worse.reason


def test_tolerance_allows_a_small_loss():
    assert decide(0.95, 0.9, 0.96, tolerance=0.02, champion_version="1").accepted
    assert not decide(0.95, 0.9, 0.98, tolerance=0.02, champion_version="1").accepted


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 0.999])
def test_min_accuracy_above_one_rejects_everything(accuracy):
    assert not decide(accuracy, 1.01, None).accepted
