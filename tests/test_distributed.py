"""Data-parallel training: launcher detection, NCCL/MPI selection and gradient buckets in process
(fake communicators), then real ``mpirun -np 2`` jobs compared with single-process training."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest

import xpnn
from xpnn import backend, distributed, layers, optim
from xpnn.data.loader import DataLoader
from xpnn.distributed import launch, transports

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distributed_worker.py")


# --------------------------------------------------------------------------- fakes


class FakeMpi:
    """Rank ``rank`` of ``size``: the other ranks send what ``others`` says; sums double (two equal ranks)."""

    name = "mpi"

    def __init__(self, rank=0, size=2, others=None, host="node0"):
        self.rank, self.size, self.others, self.host = rank, size, others, host
        self.allreduce_calls = []

    def allgather(self, obj):
        others = self.others if self.others is not None else [obj] * (self.size - 1)
        return others[:self.rank] + [obj] + others[self.rank:]

    def bcast(self, obj):
        return obj if obj is not None else ("uid-from-rank-0",)

    def bcast_array(self, array):
        pass

    def host_name(self):
        return self.host

    def allreduce_(self, buffer):
        self.allreduce_calls.append(int(buffer.size))
        return buffer * 2

    def sum_host(self, values):
        return np.asarray(values, dtype=np.float64) * self.size


class FakeNccl:
    """Records what xpnn asks of ``cupy.cuda.nccl``."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0

    def __init__(self):
        self.calls = []
        nccl = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                nccl.calls.append(("init", ndev, uid, rank, nccl.inside_device))

            def allReduce(self, send, recv, count, dtype, op, stream):
                nccl.calls.append(("allReduce", send, recv, count, dtype, op, stream))

        self.NcclCommunicator = NcclCommunicator
        self.inside_device = False

    def get_unique_id(self):
        return ("uid",)


class _Native:
    """Stands in for ``cupy.cuda.Device``: a context manager, recording whether NCCL was set up inside it."""

    def __init__(self, nccl):
        self.nccl = nccl

    def __enter__(self):
        if self.nccl is not None:
            self.nccl.inside_device = True

    def __exit__(self, *exc):
        if self.nccl is not None:
            self.nccl.inside_device = False


def fake_gpu(nccl=None):
    """A Device whose namespace is named ``cupy`` (all ``is_cupy_namespace`` looks at)."""
    return backend.Device("gpu:1", types.ModuleType("cupy"), _Native(nccl))


@pytest.fixture
def clean_launcher(monkeypatch):
    for group in distributed.LAUNCHER_VARIABLES:
        for var in group:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("XPNN_DIST_BACKEND", raising=False)
    monkeypatch.delenv("XPNN_DEVICE", raising=False)
    distributed.shutdown()
    yield monkeypatch
    distributed.shutdown()


# --------------------------------------------------------------------------- launcher and init


def test_detect_reads_each_launcher():
    assert distributed.detect({}) is None
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert distributed.detect(ompi) == distributed.Launch(3, 4, 1, "ompi")
    assert distributed.detect({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0"}).local_rank == 0
    assert distributed.detect({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}) == \
        distributed.Launch(5, 8, 1, "slurm")
    assert distributed.detect({"PMI_RANK": "0", "PMI_SIZE": "2"}).local_rank == -1


def test_single_process_init_never_imports_mpi4py(clean_launcher):
    clean_launcher.setitem(sys.modules, "mpi4py", None)  # any import of it would raise
    assert distributed.init() is None
    assert distributed.active() is None
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main()
    distributed.barrier()


def test_launched_without_mpi4py_says_how_to_install(clean_launcher):
    clean_launcher.setitem(sys.modules, "mpi4py", None)
    clean_launcher.setenv("OMPI_COMM_WORLD_RANK", "0")
    clean_launcher.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(distributed.DistributedError, match="pip install mpi4py"):
        distributed.init()


def test_device_choice_follows_the_local_rank(clean_launcher):
    clean_launcher.setattr(backend, "devices", lambda: ["cpu", "gpu:0", "gpu:1", "gpu:2"])
    assert launch._device_spec("gpu", 1) == "gpu:1"
    assert launch._device_spec("cuda", 0) == "gpu:0"
    assert launch._device_spec("cpu", 1) == "cpu"
    assert launch._device_spec(None, 1) is None
    clean_launcher.setenv("XPNN_DEVICE", "gpu")
    assert launch._device_spec(None, 2) == "gpu:2"
    clean_launcher.setattr(backend, "devices", lambda: ["cpu", "gpu:0", "gpu:1"])
    assert launch._device_spec("auto", 1) == "gpu:1"
    assert launch._device_spec("gpu", 3) == "gpu:1", "ranks map to GPUs modulo the visible count"
    # one GPU per rank (Slurm --gpus-per-task=1, CUDA_VISIBLE_DEVICES per rank): every rank sees gpu:0
    clean_launcher.setattr(backend, "devices", lambda: ["cpu", "gpu:0"])
    assert [launch._device_spec(spec, local) for spec in ("gpu", "auto") for local in (0, 1, 5)] == ["gpu:0"] * 6
    clean_launcher.setattr(backend, "devices", lambda: ["cpu"])
    assert launch._device_spec("gpu", 1) == "gpu", "an explicit GPU request is left to set_device to refuse"
    clean_launcher.setattr(backend, "devices", lambda: ["cpu"])
    with pytest.warns(UserWarning, match="no GPU"):
        assert launch._device_spec("auto", 0) == "cpu"


def test_shard_bounds_cover_every_sample_once():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [distributed.shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


# --------------------------------------------------------------------------- NCCL or MPI


def test_cpu_devices_use_mpi_without_touching_nccl(monkeypatch):
    monkeypatch.setattr(transports, "_load_nccl", lambda: pytest.fail("NCCL must not be loaded for the CPU"))
    mpi = FakeMpi()
    assert distributed.select_gradient_comm(mpi, backend.resolve("cpu")) is mpi
    with pytest.raises(distributed.DistributedError, match="needs a CuPy GPU"):
        distributed.select_gradient_comm(mpi, backend.resolve("cpu"), "nccl")


def test_nccl_is_chosen_and_called_as_cupy_documents(monkeypatch):
    nccl = FakeNccl()
    monkeypatch.setattr(transports, "_load_nccl", lambda: nccl)
    mpi = FakeMpi(rank=1, size=2, others=[(None, "node0", "gpu:0", "gpu:0")])
    stream = types.SimpleNamespace(ptr=1234)
    comm = distributed.select_gradient_comm(mpi, fake_gpu(nccl))
    assert isinstance(comm, transports.NcclComm) and comm.name == "nccl"
    assert nccl.calls == [("init", 2, ("uid-from-rank-0",), 1, True)]
    comm._stream = lambda: stream
    buffer = types.SimpleNamespace(data=types.SimpleNamespace(ptr=99), size=10, dtype=np.dtype("float32"))
    assert comm.allreduce_(buffer) is buffer
    assert nccl.calls[-1] == ("allReduce", 99, 99, 10, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 1234)


@pytest.mark.parametrize("problem", ["missing here", "missing elsewhere", "shared gpu"])
def test_unusable_nccl_falls_back_to_mpi_on_every_rank(monkeypatch, problem):
    nccl = FakeNccl()
    if problem == "missing here":
        def load():
            raise ImportError("libnccl.so.2: cannot open shared object file")
        monkeypatch.setattr(transports, "_load_nccl", load)
        others = [(None, "node0", "gpu:0", "gpu:0")]
    else:
        monkeypatch.setattr(transports, "_load_nccl", lambda: nccl)
        others = [("ImportError: no NCCL", "node0", "gpu:0", "gpu:0")] if problem == "missing elsewhere" else \
            [(None, "node0", "gpu:1", "gpu:1")]
    mpi = FakeMpi(rank=0, size=2, others=others)
    with pytest.warns(UserWarning, match="NCCL is unusable.*MPI through host memory"):
        assert distributed.select_gradient_comm(mpi, fake_gpu()) is mpi
    assert nccl.calls == []
    with pytest.raises(distributed.DistributedError, match="'nccl' was requested"):
        distributed.select_gradient_comm(mpi, fake_gpu(), "nccl")


class _PciNative(_Native):
    def __init__(self, nccl, bus):
        super().__init__(nccl)
        self.pci_bus_id = bus


def test_one_gpu_per_rank_is_not_taken_for_a_shared_gpu(monkeypatch):
    """Every rank's GPU is gpu:0 when each sees only its own; the PCI bus ids tell them apart."""
    nccl = FakeNccl()
    monkeypatch.setattr(transports, "_load_nccl", lambda: nccl)
    mine = backend.Device("gpu:0", types.ModuleType("cupy"), _PciNative(nccl, "0000:3B:00.0"))
    assert backend.gpu_identity(mine) == "0000:3B:00.0"
    mpi = FakeMpi(rank=0, size=2, others=[(None, "node0", "gpu:0", "0000:86:00.0")])
    assert isinstance(distributed.select_gradient_comm(mpi, mine), transports.NcclComm)
    shared = FakeMpi(rank=0, size=2, others=[(None, "node0", "gpu:0", "0000:3B:00.0")])
    with pytest.raises(distributed.DistributedError, match=r"ranks 0 and 1 share one GPU on node0 \(gpu:0, "
                                                           r"0000:3B:00.0\)"):
        distributed.select_gradient_comm(shared, mine, "nccl")


def test_backend_variable_forces_mpi(monkeypatch):
    monkeypatch.setenv("XPNN_DIST_BACKEND", "mpi")
    monkeypatch.setattr(transports, "_load_nccl", lambda: pytest.fail("XPNN_DIST_BACKEND=mpi must skip NCCL"))
    mpi = FakeMpi()
    assert distributed.select_gradient_comm(mpi, fake_gpu()) is mpi
    with pytest.raises(ValueError, match="'auto', 'nccl' or 'mpi'"):
        distributed.select_gradient_comm(mpi, fake_gpu(), "gloo")


# --------------------------------------------------------------------------- buckets and sharding


def _model():
    return xpnn.Sequential([layers.Linear(6, 5), layers.ReLU(), layers.Linear(5, 3)])


@pytest.mark.parametrize("bucket_bytes", [10**9, 64])
def test_gradients_are_weighted_bucketed_and_kept_on_the_device(device, bucket_bytes):
    model = _model()
    params = model.parameters()
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g, device)
    params[1].grad = None
    mpi = FakeMpi()
    strategy = distributed.DataParallel(mpi, mpi, bucket_bytes=bucket_bytes)
    strategy.reduce_gradients(params, 3, global_count=8)
    for i, (p, g) in enumerate(zip(params, grads)):
        assert backend.device_of(p.grad) == device
        expected = np.zeros_like(g) if i == 1 else 2 * g * 3 / 8
        np.testing.assert_allclose(backend.to_numpy(p.grad), expected, rtol=1e-6)
    sizes = [p.size for p in params]
    if bucket_bytes > 1000:
        assert mpi.allreduce_calls == [sum(sizes)]
    else:
        assert len(mpi.allreduce_calls) > 1 and sum(mpi.allreduce_calls) == sum(sizes)
        assert all(n * 4 <= 64 or n in sizes for n in mpi.allreduce_calls)
    assert strategy.stats["allreduce_bytes"] == 4 * sum(sizes)


class RawComm:
    """The part of an mpi4py communicator ``_MpiComm`` uses: an in-place sum over two equal ranks."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Allreduce(self, send, recv, op):
        assert send == "IN_PLACE" and op == "SUM" and recv.flags.writeable
        recv *= 2


def test_mpi_allreduce_stages_any_namespace_through_host_memory(device):
    comm = transports.MpiComm(RawComm(), types.SimpleNamespace(IN_PLACE="IN_PLACE", SUM="SUM"))
    buffer = backend.to_device(np.arange(5, dtype=np.float32), device)
    out = comm.allreduce_(buffer)
    assert backend.device_of(out) == device and out.dtype == buffer.dtype
    np.testing.assert_array_equal(backend.to_numpy(out), 2 * np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(comm.sum_host(np.array([1.0, 2.0])), [2.0, 4.0])


def test_sharded_loader_gives_each_rank_its_slice_and_steps_when_idle():
    mpi = FakeMpi(rank=1, size=2)
    strategy = distributed.DataParallel(mpi, mpi)
    model = _model()
    steps = []
    opt = optim.SGD(lr=0.1)
    opt.step = lambda params: steps.append([p.grad is not None for p in params])
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    loader = strategy.prepare(model, DataLoader(x, np.arange(5), batch_size=2, shuffle=True, seed=1), opt)
    loader.set_epoch(0)
    order = loader.loader.order()
    seen = [backend.to_numpy(yb).tolist() for _, yb in loader]
    assert seen == [[int(order[1])], [int(order[3])]]  # batches [0, 1], [2, 3], [4]: rank 1 is idle in the last
    assert steps == [[True] * 4]  # the idle step all-reduced zeros and stepped the optimizer
    assert len(loader) == 3
    assert not strategy.sync_due()  # the tail batch has an idle rank: no one syncs there


def test_frozen_parameters_are_neither_all_reduced_nor_stepped_and_frozen_statistics_stay():
    mpi = FakeMpi(rank=1, size=2)
    strategy = distributed.DataParallel(mpi, mpi)
    model = xpnn.Sequential([layers.Linear(6, 5), layers.BatchNorm1D(5), layers.ReLU(), layers.Linear(5, 3)])
    model.layers[0].trainable = model.layers[1].trainable = False
    model.layers[1].running_mean = backend.to_device(np.arange(5, dtype=np.float32))
    steps = []
    opt = optim.SGD(lr=0.1)
    opt.step = lambda params: steps.append([p.name for p in params])
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    loader = strategy.prepare(model, DataLoader(x, np.arange(5), batch_size=2, shuffle=True, seed=1), opt)
    loader.set_epoch(0)
    list(loader)
    assert steps == [["3.weight", "3.bias"]] and mpi.allreduce_calls == [5 * 3 + 3]
    mpi.sum_host = lambda values: np.zeros_like(values, dtype=np.float64)  # an averaged buffer would become 0
    strategy.end_epoch(model)
    np.testing.assert_array_equal(backend.to_numpy(model.layers[1].running_mean), np.arange(5))


class DisagreeingMpi(FakeMpi):
    """Rank 2 of three reports 90 training samples where ranks 0 and 1 have 100."""

    def allgather(self, obj):
        return [obj, obj, (obj[0], obj[1], obj[2].replace("100", "90"))]


def test_disagreeing_settings_name_the_ranks():
    model = _model()
    distributed.DataParallel(FakeMpi(size=3), FakeMpi(size=3)).check_agreement(model, {"training samples": 100})
    strategy = distributed.DataParallel(DisagreeingMpi(size=3), FakeMpi(size=3))
    with pytest.raises(distributed.DistributedError,
                       match=r"training settings differ across ranks: ranks 0, 1: .*100.*; rank 2: .*90"):
        strategy.check_agreement(model, {"training samples": 100})


# --------------------------------------------------------------------------- real MPI jobs


@functools.lru_cache(maxsize=1)
def _mpirun() -> tuple[str, ...] | None:
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ("--oversubscribe", "--allow-run-as-root") if "Open MPI" in version or "OpenRTE" in version else ()
    return (exe, *extra)


needs_mpi = pytest.mark.skipif(
    _mpirun() is None, reason="needs mpirun and mpi4py (apt install openmpi-bin libopenmpi-dev; pip install mpi4py)")


def _launch(scenario: str, out: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("XPNN_DIST_BACKEND", "XPNN_DEVICE")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.monotonic()
    proc = subprocess.run([*_mpirun(), "-np", "2", sys.executable, WORKER, scenario, out], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distributed"))
    proc, _ = _launch("train", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _load(out, name):
    with open(os.path.join(out, name + ".json")) as f:
        history = json.load(f)
    with np.load(os.path.join(out, name + ".npz")) as f:
        return dict(f), history


@needs_mpi
@pytest.mark.parametrize("case", ["cnn", "uneven"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(trained, case):
    sys.path.insert(0, HERE)
    import distributed_worker

    state0, history0 = _load(trained, f"{case}_rank0")
    state1, history1 = _load(trained, f"{case}_rank1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, ref_history = distributed_worker.run_case(case)
    for key, value in reference.items():
        assert np.array_equal(state0[key], state1[key]), f"ranks differ in {key}"
        np.testing.assert_allclose(state0[key], value, rtol=1e-4, atol=2e-5, err_msg=key)
    for key, values in ref_history.items():
        np.testing.assert_allclose(history0[key], values, rtol=1e-4, err_msg=key)
        assert history1[key] == history0[key]


@needs_mpi
def test_batchnorm_statistics_and_files_agree(trained):
    state0, _ = _load(trained, "batchnorm_rank0")
    state1, _ = _load(trained, "batchnorm_rank1")
    assert {"2.running_mean", "2.running_var"} <= set(state0)
    for key in state0:
        assert np.array_equal(state0[key], state1[key]), key
    assert os.path.exists(os.path.join(trained, "written_by_rank0.json"))
    assert not os.path.exists(os.path.join(trained, "written_by_rank1.json"))
    with open(os.path.join(trained, "stats_rank1.json")) as f:
        stats = json.load(f)
    assert stats["world_size"] == 2 and stats["local_rank"] == 1
    assert stats["allreduce_calls"] == stats["steps"]  # one bucket per step for these small models


@needs_mpi
def test_a_failing_rank_aborts_the_job_naming_it(tmp_path):
    proc, seconds = _launch("raise", str(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert "xpnn.distributed: rank 1 failed: RuntimeError: boom on purpose" in proc.stderr
    assert seconds < 30


@needs_mpi
def test_different_models_are_reported_with_their_ranks(tmp_path):
    proc, _ = _launch("mismatch", str(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert "DistributedError: model architectures differ across ranks: rank 0: " in proc.stderr
    assert "out_features=32" in proc.stderr and "; rank 1: " in proc.stderr and "out_features=16" in proc.stderr
