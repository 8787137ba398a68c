"""torch's thread count is set for a block and restored, also when the block fails."""

import pytest
import torch

from bidsharmony.datasets.template_space import make_template_scans
from bidsharmony.harmonize.image_base import get_image_harmonizer
from bidsharmony.utils.threads import torch_threads, with_own_threads


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_threads_are_set_inside_and_restored_after(one_thread):
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == 1


def test_none_leaves_the_thread_count_and_zero_means_one(one_thread):
    with torch_threads(2), torch_threads(None):
        assert torch.get_num_threads() == 2
    with torch_threads(0):
        assert torch.get_num_threads() == 1


def test_a_decorated_method_runs_on_its_own_threads(one_thread):
    class Model:
        num_threads = 2

        @with_own_threads
        def threads(self):
            return torch.get_num_threads()

    assert Model().threads() == 2
    assert torch.get_num_threads() == 1


def test_an_image_harmonizer_leaves_the_callers_thread_count(one_thread):
    data = make_template_scans(n_subjects=4, n_sites=2, n_traveling=0, resolution=4, seed=0)
    model = get_image_harmonizer("histogram-matching", reference_site=data.sites[0]["name"], num_threads=2)
    model.fit(data.scans)
    model.transform_scan(data.scans.images[0], data.scans.masks[0], data.scans.sites[0])
    assert torch.get_num_threads() == 1
