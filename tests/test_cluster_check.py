"""The pre-build check that every Ray node sees the source roots and the output, on a real local Ray."""

from __future__ import annotations

import pytest
import ray

from pyramid.cluster import check_nodes_see, paths_missing_on_nodes
from pyramid.errors import BuildError

# Earlier tests in the same process imported lance; starting Ray here forks its daemons, and no Lance
# work happens in them.
pytestmark = pytest.mark.filterwarnings("ignore:lance is not fork-safe")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_a_node_that_sees_everything_passes_and_the_token_is_removed(local_ray, tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "out").mkdir()
    assert paths_missing_on_nodes([str(tmp_path / "source")], tmp_path / "out") == {}
    check_nodes_see([str(tmp_path / "source")], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_source_root_is_named_with_its_node(local_ray, tmp_path):
    (tmp_path / "out").mkdir()
    missing = paths_missing_on_nodes([str(tmp_path / "elsewhere")], tmp_path / "out")
    node = ray.util.get_node_ip_address()
    assert missing == {node: [f"{tmp_path / 'elsewhere'} (source root)"]}
    with pytest.raises(BuildError, match=f"node {node} does not see {tmp_path / 'elsewhere'} \\(source root\\)"):
        check_nodes_see([str(tmp_path / "elsewhere")], tmp_path / "out")
