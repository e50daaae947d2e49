"""The block plan of a group's permutation budget and the in-order merge of its blocks
(pruning.games.blocks): plain arithmetic, checked without Ray."""
from __future__ import annotations

import random

import pytest
import torch

from pruning.errors import InputError
from pruning.games import (
    BlockMerge,
    FunctionGame,
    ShapleyOptions,
    estimate_block,
    shapley_block_plan,
    shapley_blocks,
)

#: a game with distinct marginals everywhere: v(S) = (sum of weights)^1.5
WEIGHTS = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
GAME = FunctionGame(len(WEIGHTS), lambda s: sum(WEIGHTS[i] for i in s) ** 1.5)


def _blocks(options: ShapleyOptions, seed: int = 0, name: str = "g"):
    return [estimate_block(GAME, options, count, seq) for count, seq in shapley_blocks(options, seed, name)]


def test_block_plan():
    assert shapley_block_plan(8, 2, antithetic=True) == [2, 2, 2, 2]
    assert shapley_block_plan(8, 3, antithetic=True) == [2, 2, 2, 2]  # blocks hold whole pairs
    assert shapley_block_plan(7, 4, antithetic=True) == [4, 2]  # budget rounded down to pairs
    assert shapley_block_plan(5, 2, antithetic=False) == [2, 2, 1]
    assert shapley_block_plan(1, 8, antithetic=True) == [2]
    with pytest.raises(ValueError):
        shapley_block_plan(0, 2, antithetic=False)


def test_blocks_depend_on_seed_and_group_only():
    options = ShapleyOptions(max_permutations=10, batch_permutations=4, antithetic=False, truncation=None)
    plan = shapley_blocks(options, 3, "layer1")
    assert [count for count, _ in plan] == [4, 4, 2]
    again = _blocks(options, 3, "layer1")
    assert all(torch.equal(a.values, b.values) for a, b in zip(_blocks(options, 3, "layer1"), again))
    other_group = _blocks(options, 3, "layer2")
    other_seed = _blocks(options, 4, "layer1")
    assert not torch.equal(again[0].values, other_group[0].values)
    assert not torch.equal(again[0].values, other_seed[0].values)
    # a block is a plain permutation estimate: efficient, with the block's permutation count
    for block, (count, _) in zip(again, plan):
        assert block.permutations == count
        assert float(block.values.sum()) == pytest.approx(block.v_full - block.v_empty, abs=1e-10)


def test_merge_does_not_depend_on_the_arrival_order():
    options = ShapleyOptions(max_permutations=12, batch_permutations=2, antithetic=True, truncation=None)
    blocks = _blocks(options)
    in_order = BlockMerge(len(blocks), epsilon=None)
    for k, block in enumerate(blocks):
        in_order.add(k, block)
    shuffled = BlockMerge(len(blocks), epsilon=None)
    arrival = list(enumerate(blocks))
    random.Random(0).shuffle(arrival)
    for k, block in arrival:
        assert not shuffled.done
        shuffled.add(k, block)
    a, b = in_order.estimate(), shuffled.estimate()
    assert shuffled.done and shuffled.merged == len(blocks) and not shuffled.converged
    assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
    assert (a.permutations, a.evaluations) == (12, sum(x.evaluations for x in blocks) - 2 * (len(blocks) - 1))
    # Chan's merge of the blocks equals the pairwise merge of the estimates
    chained = blocks[0]
    for block in blocks[1:]:
        chained = chained.merge(block)
    torch.testing.assert_close(a.values, chained.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.stderr, chained.stderr, rtol=0, atol=1e-12)


def test_merge_stops_at_epsilon_and_ignores_later_blocks():
    # an antithetic pair is one sample: two blocks of one pair give the two samples a stderr needs
    options = ShapleyOptions(max_permutations=20, batch_permutations=2, antithetic=True, truncation=None)
    blocks = _blocks(options)
    merge = BlockMerge(len(blocks), epsilon=1e6)
    merge.add(2, blocks[2])  # waits for blocks 0 and 1
    assert merge.merged == 0 and not merge.done
    merge.add(1, blocks[1])
    merge.add(0, blocks[0])
    assert merge.converged and merge.done and merge.merged == 2  # block 2 arrived, but after the stop
    merge.add(3, blocks[3])
    est = merge.estimate()
    assert est.permutations == 4
    assert torch.equal(est.values, blocks[0].merge(blocks[1]).values)


def test_merge_without_blocks_has_no_estimate():
    with pytest.raises(ValueError, match="no block"):
        BlockMerge(3, epsilon=None).estimate()


def test_options_validate_and_give_the_truncation_tolerance():
    span = GAME.values(torch.ones(1, 6, dtype=torch.bool))[0] - GAME.values(torch.zeros(1, 6, dtype=torch.bool))[0]
    assert ShapleyOptions(truncation=0.01).truncation_tol(GAME) == pytest.approx(0.01 * abs(float(span)))
    assert ShapleyOptions(truncation=None).truncation_tol(GAME) is None
    assert ShapleyOptions(exact_below=99).exact_below == 10  # exact enumeration is capped
    for bad in ({"epsilon": 0.0}, {"value": "neg_ce"}, {"mode": "jit"}, {"batch_permutations": 0},
                {"truncation": -1.0}, {"truncation_window": 0}):
        with pytest.raises(InputError):
            ShapleyOptions(**bad)
