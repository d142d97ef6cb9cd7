import pytest
from torch import nn

from dpdiffusion.dpsgd.validation import NotPerExampleError, check_per_example


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(4), nn.BatchNorm1d(4), nn.SyncBatchNorm(4)])
def test_batch_norm_refused_with_its_name_and_the_fix(layer):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.SiLU(), layer))
    with pytest.raises(NotPerExampleError, match=r"'1\.1'.*GroupNorm"):
        check_per_example(model)


def test_instance_norm_with_running_stats_refused():
    with pytest.raises(NotPerExampleError, match="running statistics"):
        check_per_example(nn.Sequential(nn.InstanceNorm2d(4, track_running_stats=True)))


def test_per_example_layers_accepted():
    check_per_example(nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(2, 8), nn.LayerNorm(8), nn.InstanceNorm2d(8)))
