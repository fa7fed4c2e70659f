"""The torch 2.1 fallbacks of drconv_mmdet.torch_compat, run on the installed torch."""
import pytest
import torch
from torch import nn

from drconv_mmdet import torch_compat

HAS_LEGACY_AUTOCAST_API = hasattr(torch, 'is_autocast_cpu_enabled')
HAS_PUBLIC_PRE_HOOK = hasattr(nn.Module, 'register_load_state_dict_pre_hook')


@pytest.fixture(params=['current', 'legacy'])
def autocast_api(request, monkeypatch):
    """The torch >= 2.4 device-type API, and the per-device functions torch 2.1 has."""
    if request.param == 'legacy':
        if not HAS_LEGACY_AUTOCAST_API:
            pytest.skip(f'torch {torch.__version__} no longer has the per-device autocast API')
        # Newer torch warns that these functions are deprecated; torch 2.1 has nothing else.
        monkeypatch.setattr(torch_compat, '_HAS_DEVICE_AUTOCAST_API', False)
    elif not torch_compat._HAS_DEVICE_AUTOCAST_API:
        pytest.skip(f'torch.get_autocast_dtype needs torch >= 2.4, this is {torch.__version__}')
    return request.param


@pytest.mark.filterwarnings('ignore:torch.*is deprecated:DeprecationWarning')
def test_autocast_state(autocast_api):
    assert not torch_compat.is_autocast_enabled('cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch_compat.is_autocast_enabled('cpu')
        assert not torch_compat.is_autocast_enabled('cuda')
        assert torch_compat.get_autocast_dtype('cpu') == torch.bfloat16
    assert not torch_compat.is_autocast_enabled('cpu')
    # Outside autocast the dtype is the one autocast would use.
    assert torch_compat.get_autocast_dtype('cuda') == torch.float16


def test_legacy_api_knows_cpu_and_cuda_only(monkeypatch):
    monkeypatch.setattr(torch_compat, '_HAS_DEVICE_AUTOCAST_API', False)
    assert not torch_compat.is_autocast_enabled('xpu')
    with pytest.raises(NotImplementedError,
                       match=r"^the autocast dtype of device type 'xpu' needs torch >= 2.4 "
                       r"\(this is torch .*\); only \['cpu', 'cuda'\] are supported before$"):
        torch_compat.get_autocast_dtype('xpu')


class _Renamed(nn.Module):
    """Loads checkpoints that call its parameter ``old``."""

    def __init__(self):
        super().__init__()
        self.new = nn.Parameter(torch.zeros(3))
        self.calls = []
        self.handle = torch_compat.register_load_state_dict_pre_hook(self, self._rename)

    @staticmethod
    def _rename(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs):
        module.calls.append((prefix, strict))
        if prefix + 'old' in state_dict:
            state_dict[prefix + 'new'] = state_dict.pop(prefix + 'old')


@pytest.mark.parametrize('api', ['public', 'private'])
def test_load_state_dict_pre_hook(api, monkeypatch):
    if api == 'public' and not HAS_PUBLIC_PRE_HOOK:
        pytest.skip(f'the public pre-hook method needs torch >= 2.5, this is {torch.__version__}')
    if api == 'private' and HAS_PUBLIC_PRE_HOOK:
        monkeypatch.delattr(nn.Module, 'register_load_state_dict_pre_hook')
    outer = nn.Sequential(nn.Identity(), _Renamed())
    outer.load_state_dict({'1.old': torch.arange(3.0)})
    torch.testing.assert_close(outer[1].new.detach(), torch.arange(3.0))
    assert outer[1].calls == [('1.', True)]
    outer[1].handle.remove()
    with pytest.raises(RuntimeError, match='Missing key'):
        outer.load_state_dict({'1.old': torch.ones(3)})
    assert len(outer[1].calls) == 1
