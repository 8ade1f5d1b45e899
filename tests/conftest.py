import os

import pytest
import torch
from fixtures_clip import tiny_clip, tiny_clip_files  # noqa: F401
from fixtures_data import tiny_coco, tiny_voc  # noqa: F401
from fixtures_demo import demo_run  # noqa: F401

# The tests use tiny models: one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)

DEVICE_ENV = "EXCEL_TEST_DEVICE"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Device of the device-parametrised tests: $EXCEL_TEST_DEVICE (default cpu; tools/gpu_check.sh sets cuda)."""
    name = os.environ.get(DEVICE_ENV, "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_ENV}={name} but CUDA is not available; unset it to test on the CPU")
    # The references are float32 on the CPU: no TF32 rounding in the device's matrix products and convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device(name)
