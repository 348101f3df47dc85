"""A policy's [canary] quality thresholds reach the rollout it creates."""

from __future__ import annotations

import pytest

from fleet.models.ota import RolloutCreate
from fleet.policy import PolicyError, parse_policy

POLICY = """
group = "ward-3"
targets = ["cpu-x86"]
[gates]
min_accuracy = 0.9
[canary]
waves = [1, 100]
soak_s = 120
max_accuracy_drop_points = 1.5
max_prediction_shift = 0.2
min_quality_devices = 3
[signing]
approval = "operator"
"""


def test_the_canary_table_becomes_the_rollouts_thresholds() -> None:
    # Execute
    canary = parse_policy(POLICY).canary
    rollout = RolloutCreate(model_version_id=1, group="ward-3", **canary.rollout_fields())

    # Assert: what the file says, and the defaults for the rest
    assert rollout.waves == [1, 100] and rollout.soak_s == 120.0
    assert rollout.max_accuracy_drop_points == 1.5 and rollout.max_prediction_shift == 0.2
    assert rollout.max_latency_ratio == 1.5 and rollout.max_error_rate == 0.01
    assert rollout.min_quality_devices == 3 and rollout.min_quality_samples == 200


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("max_prediction_shift = 1.5", r"\[canary\]: max_prediction_shift = 1.5 is out of range"),
        ("min_quality_devices = 1", "min_quality_devices must be a whole number in 2.."),
        ("min_quality_samples = 0", "min_quality_samples must be a whole number in 1.."),
    ],
)
def test_out_of_range_quality_keys_are_one_line(line: str, words: str) -> None:
    key = line.split(" =")[0]
    kept = "\n".join(x for x in POLICY.splitlines() if not x.startswith(key + " "))
    text = kept.replace("[signing]", f"{line}\n[signing]")
    with pytest.raises(PolicyError, match=words) as err:
        parse_policy(text)
    assert "\n" not in str(err.value)
