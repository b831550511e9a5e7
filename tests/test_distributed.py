"""Two jax.distributed processes on 127.0.0.1 (2 CPU devices each, FSDP) reproduce the losses
and parameters of the same 3 train steps on one device."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, three_steps_on_one_device
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow  # two jax.distributed processes

HERE = Path(__file__).resolve().parent


def test_two_processes_match_one_device(tmp_path):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(port), str(i),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    result = load_file(str(tmp_path / "result.safetensors"))
    losses, params = three_steps_on_one_device()
    np.testing.assert_allclose(result.pop("losses"), losses, rtol=1e-5)
    assert result.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert losses[-1] < losses[0]  # the three steps really trained
