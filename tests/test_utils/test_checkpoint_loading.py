"""torch.load(weights_only=True) on the checkpoints an mmengine Runner saves."""
import argparse
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.utils import digit_version
from torch import nn

from drconv_mmdet.utils import allow_mmengine_checkpoints

WEIGHTS_ONLY_BY_DEFAULT = digit_version(torch.__version__) >= digit_version('2.6.0')
needs_weights_only_default = pytest.mark.skipif(
    not WEIGHTS_ONLY_BY_DEFAULT, reason='torch < 2.6 loads with weights_only=False by default')


class _Regressor(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(1)

    def forward(self, inputs, targets=None, mode='loss'):
        return dict(loss=(self.norm(self.fc(inputs)).squeeze(1) - targets).square().mean())


class _Points(torch.utils.data.Dataset):

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.tensor([index, 1.0]), targets=torch.tensor(index / 8))


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory) -> str:
    """A checkpoint of an mmengine Runner after 2 iterations: message hub, optimizer, schedulers."""
    work_dir = tmp_path_factory.mktemp('runner')
    runner = Runner(
        model=_Regressor(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Points(),
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=4,
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.33, by_epoch=False, begin=0, end=1),
            dict(type='MultiStepLR', milestones=[1], by_epoch=False, gamma=0.1),
        ],
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2)),
        randomness=dict(seed=0))
    runner.train()
    return str(work_dir / 'iter_2.pth')


@pytest.fixture
def no_safe_globals():
    """Runs a test with torch's allowlist empty, and restores it afterwards."""
    if not WEIGHTS_ONLY_BY_DEFAULT:  # allow_mmengine_checkpoints leaves the allowlist alone
        yield
        return
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def _assert_same(loaded, expected, where='checkpoint'):
    """Recursive equality for what a checkpoint holds: tensors, arrays, HistoryBuffers."""
    assert type(loaded) is type(expected), where
    if isinstance(expected, dict):
        assert loaded.keys() == expected.keys(), where
        for key in expected:
            _assert_same(loaded[key], expected[key], f'{where}[{key!r}]')
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected), where
        for index, (a, b) in enumerate(zip(loaded, expected)):
            _assert_same(a, b, f'{where}[{index}]')
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(loaded, expected, rtol=0, atol=0, msg=where)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(loaded, expected, err_msg=where)
        assert loaded.dtype == expected.dtype, where
    elif isinstance(expected, HistoryBuffer):
        _assert_same(loaded.data, expected.data, f'{where}.data')
        assert loaded.mean() == expected.mean(), where
    else:
        assert loaded == expected, where


@needs_weights_only_default
def test_default_load_needs_the_allowlist(runner_checkpoint, no_safe_globals):
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(runner_checkpoint, map_location='cpu')
    allow_mmengine_checkpoints()
    assert torch.load(runner_checkpoint, map_location='cpu')['meta']['iter'] == 2


def test_default_load_gives_the_full_checkpoint(runner_checkpoint, no_safe_globals):
    allow_mmengine_checkpoints()
    loaded = torch.load(runner_checkpoint, map_location='cpu')
    expected = torch.load(runner_checkpoint, map_location='cpu', weights_only=False)
    assert isinstance(expected['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    _assert_same(loaded, expected)


@needs_weights_only_default
def test_numpy_1_paths_load(no_safe_globals):
    """numpy 2 pickles numpy._core.multiarray, numpy 1 numpy.core.multiarray: both load."""
    buffer = io.BytesIO()
    # The legacy format is one plain pickle stream, so the module path can be rewritten in place.
    torch.save(dict(array=np.arange(3.0), scalar=np.float32(0.5)),
               buffer,
               _use_new_zipfile_serialization=False)
    for module in (b'numpy._core.multiarray', b'numpy.core.multiarray'):
        data = re.sub(rb'numpy\.(_core|core)\.multiarray\n', module + b'\n', buffer.getvalue())
        assert module + b'\n' in data
        allow_mmengine_checkpoints()
        loaded = torch.load(io.BytesIO(data))
        np.testing.assert_array_equal(loaded['array'], np.arange(3.0))
        assert loaded['scalar'] == np.float32(0.5) and loaded['scalar'].dtype == np.float32


class _Payload:

    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@needs_weights_only_default
@pytest.mark.parametrize('call, message', [
    ((argparse.Namespace, ()), 'Unsupported global: GLOBAL argparse.Namespace'),
    ((getattr, (HistoryBuffer, '__init__')),
     r"allows getattr only for HistoryBuffer.\{min,max,current,mean\}, but the checkpoint asks "
     r"for getattr\(<class 'mmengine.logging.history_buffer.HistoryBuffer'>, '__init__'\)"),
    ((getattr, (np.ndarray, 'tofile')), r'getattr\(<class .numpy.ndarray.>, .tofile.\)'),
])
def test_other_globals_are_still_refused(call, message, tmp_path, no_safe_globals):
    path = Path(tmp_path) / 'payload.pth'
    torch.save(dict(state_dict={}, meta=_Payload(call)), path)
    allow_mmengine_checkpoints()
    with pytest.raises(pickle.UnpicklingError, match=message):
        torch.load(path)
