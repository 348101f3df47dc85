"""Device profiles: the registry, the timing model, ``--devices`` parsing and assignment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulation.devices import (
    DeviceProfile,
    assign_devices,
    available_profiles,
    client_duration_s,
    get_profile,
    parse_device_mix,
    register_profile,
    relative_speed,
)


def test_the_five_profiles_ship_and_load() -> None:
    assert {"jetson-orin", "rpi5", "rpi4", "cpu-x86", "phone-like"} <= set(available_profiles())
    for name in available_profiles():
        profile = get_profile(name)
        assert profile.name == name and len(profile.hourly_availability) == 24


def test_registry_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_profile(get_profile("rpi5"))


def test_unknown_profile_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown device profile 'rpi9'.*rpi5"):
        get_profile("rpi9")


def test_duration_adds_latency_transfer_and_compute() -> None:
    # Prepare: a device with round numbers.
    profile = DeviceProfile(
        name="unit",
        description="",
        seconds_per_example={"t": 0.01},
        default_seconds_per_example=1.0,
        overhead_s=0.5,
        jitter=0.0,
        downlink_mbps=8.0,  # 1 MB/s
        uplink_mbps=4.0,  # 0.5 MB/s
        latency_ms=100.0,
        hourly_availability=(1.0,) * 24,
        dropout=0.0,
    )
    # Execute
    seconds = client_duration_s(
        profile, task="t", num_examples=100, model_bytes=1_000_000, epochs=2
    )
    # Assert: 0.1 + 1.0 (down) + 0.5 + 2.0 (compute) + 0.1 + 2.0 (up)
    assert seconds == pytest.approx(5.7)
    evaluate = client_duration_s(
        profile, task="t", num_examples=300, model_bytes=1_000_000, upload_bytes=0, kind="evaluate"
    )
    assert evaluate == pytest.approx(0.1 + 1.0 + 0.5 + 1.0 + 0.1)
    assert profile.seconds_per_example_for("other") == 1.0


@given(
    n=st.integers(0, 10_000),
    extra=st.integers(1, 1000),
    size=st.integers(0, 10**8),
    name=st.sampled_from(["jetson-orin", "rpi5", "rpi4", "cpu-x86", "phone-like"]),
)
def test_duration_grows_with_work_and_bytes(n: int, extra: int, size: int, name: str) -> None:
    profile = get_profile(name)
    base = client_duration_s(profile, task="digits-cnn", num_examples=n, model_bytes=size)
    assert base > 0
    assert (
        client_duration_s(profile, task="digits-cnn", num_examples=n + extra, model_bytes=size)
        > base
    )
    assert (
        client_duration_s(profile, task="digits-cnn", num_examples=n, model_bytes=size + 10_000)
        > base
    )


def test_speeds_are_ordered_as_the_hardware() -> None:
    speeds = {n: relative_speed(get_profile(n), "digits-cnn") for n in available_profiles()}
    assert speeds["cpu-x86"] == 1.0
    assert speeds["jetson-orin"] > speeds["cpu-x86"] > speeds["phone-like"]
    assert speeds["phone-like"] > speeds["rpi5"] > speeds["rpi4"]


def test_parse_device_mix() -> None:
    assert parse_device_mix("jetson-orin=0.2,rpi5=0.5,cpu-x86=0.3") == (
        ("jetson-orin", 0.2),
        ("rpi5", 0.5),
        ("cpu-x86", 0.3),
    )
    assert parse_device_mix("rpi4") == (("rpi4", 1.0),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("rpi5=0.5,rpi4=0.4", "sum to 0.9"),
        ("rpi5=half,rpi4=0.5", "must be a number"),
        ("rpi5=0.5,rpi5=0.5", "twice"),
        ("toaster=1", "unknown device profile 'toaster'"),
        ("rpi5=0.5,rpi4", "no fraction"),
        ("rpi5=0,rpi4=1", r"in \(0, 1\]"),
    ],
)
def test_bad_device_mix_says_how_to_fix(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_device_mix(text)


@given(
    n=st.integers(1, 3000),
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    seed=st.integers(0, 2**31),
)
def test_assignment_gives_exact_shares(n: int, weights: list[int], seed: int) -> None:
    names = ["jetson-orin", "rpi5", "rpi4", "cpu-x86", "phone-like"][: len(weights)]
    total = sum(weights)
    mix = tuple((name, w / total) for name, w in zip(names, weights, strict=False))
    assigned = assign_devices(n, mix, seed=seed)
    counts = Counter(assigned)
    assert len(assigned) == n
    for name, fraction in mix:
        assert abs(counts[name] - fraction * n) < 1.0 + 1e-9
    assert assigned == assign_devices(n, mix, seed=seed)


def test_profile_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[network]\ndownlink-mbps = 1.0\nuplink-mbps = 1.0\n')
    with pytest.raises(ValueError, match="lacks the key 'compute'"):
        DeviceProfile.from_toml(bad)
    bad.write_text(
        'name = "bad"\n[compute]\ndefault-seconds-per-example = -1\n'
        "[network]\ndownlink-mbps = 1.0\nuplink-mbps = 1.0\n"
        "[availability]\nhourly = [1.0]\n"
    )
    with pytest.raises(ValueError, match="default-seconds-per-example must be a positive"):
        DeviceProfile.from_toml(bad)
