import hashlib
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="Unwrapped parameters detected")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread (contended 2-thread pools stall on shared machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def state_hash(model: torch.nn.Module) -> str:
    """A digest of every tensor in the state dict, and of the module structure and training flags."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(model).encode())
    h.update(bytes(m.training for m in model.modules()))
    return h.hexdigest()
