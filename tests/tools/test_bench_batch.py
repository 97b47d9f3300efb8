"""ice-bench-batch's cluster layouts: the machine's CPUs split over the nodes, head node first."""

import pytest
from iceformer.tools.bench_batch import _node_cpus


@pytest.mark.parametrize(
    "nodes, cpus, layout",
    [(1, 2, [2]), (2, 2, [1, 1]), (3, 2, [0, 1, 1]), (2, 8, [4, 4]), (3, 8, [0, 4, 4]), (4, 8, [0, 3, 3, 2])],
)
def test_node_cpus_splits_every_cpu_and_spares_the_head_from_three_nodes(nodes, cpus, layout):
    assert _node_cpus(nodes, cpus) == layout and sum(layout) == cpus
