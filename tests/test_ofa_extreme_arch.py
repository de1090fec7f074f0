"""One largest arch for Once-for-All: the supernet's teacher is :func:`extreme_arch`'s
largest, and the two ends really bound the space (params of built nets as the oracle)."""

from __future__ import annotations

import numpy as np

from nasforge.hardware import count_params
from nasforge.oneshot.ofa.accuracy import sample_subnets
from nasforge.oneshot.ofa.elastic import ElasticMobileSupernet, extreme_arch
from nasforge.spaces import create_space


def test_the_supernets_largest_arch_is_the_spaces_largest_and_bounds_every_sample() -> None:
    space = create_space(
        "mobile",
        (1, 8, 8),
        10,
        resolutions=[0.75, 1.0],
        activations=["hswish", "relu"],
        se=[False, True],
    )
    big, little = extreme_arch(space, True), extreme_arch(space, False)
    assert ElasticMobileSupernet(space).largest_arch() == big
    assert big["stage0/block0/act"] == "hswish" and big["stage0/block0/se"] is True
    assert little["stage0/block0/se"] is False and big["resolution"] == 1.0
    hi, lo = count_params(space.build(big)), count_params(space.build(little))
    rng = np.random.default_rng(0)
    for _ in range(12):
        n = count_params(space.build(space.sample(rng)))
        assert lo <= n <= hi
    # the subnet sample starts from the same two ends
    got = sample_subnets(space, lambda a: 0.5, 3, seed=0)
    assert [a for a, _ in got[:2]] == [big, little]
