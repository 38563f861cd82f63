"""Learning-rate schedules: both peak at the end of warmup; cosine reaches zero at max_steps."""
import pytest

from seq2seq.config import ConfigError
from train.config import load_config
from train.schedule import cosine, inverse_sqrt


def test_both_schedules_peak_exactly_at_the_end_of_warmup():
    for factor in (inverse_sqrt(100), cosine(100, 1000)):
        rates = [factor(s) for s in range(1000)]
        assert max(rates) == rates[99] == 1.0
        assert all(a < b for a, b in zip(rates[:99], rates[1:100]))  # warmup rises


def test_cosine_falls_to_zero_at_max_steps_and_inverse_sqrt_does_not():
    cos, inv = cosine(100, 1000), inverse_sqrt(100)
    after = [cos(s) for s in range(99, 1000)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert cos(999) == pytest.approx(0.0, abs=1e-12) and cos(5000) == pytest.approx(0.0, abs=1e-12)
    assert inv(399) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert cos(549) == pytest.approx(0.5)  # half-way through the decay


def test_unknown_schedule_is_a_config_error_naming_the_value():
    with pytest.raises((ConfigError, ValueError), match="linear"):
        load_config(None, ["optim.schedule=linear"])
