"""A real llama.cpp ``llama-server`` for integration tests: built once and cached, a tiny model, a running server.

The server is built from the llama.cpp that the ``llama-cpp-python`` sdist on PyPI vendors, pinned by version and
SHA-256, CPU only, only the ``llama-server`` target. The binary is cached outside the clone (``$GW_TEST_CACHE``
or ``${XDG_CACHE_HOME:-~/.cache}/gpuwatch-tests``), so only the first run on a machine pays for the build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
from serving import free_port, terminate

# llama-cpp-python 0.3.36 vendors llama.cpp commit 0c1e570, the one the research capture
# (research data inference-metrics/llamacpp.txt) was taken from. The hash is PyPI's for the sdist.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e570"

# Everything off that llama-server does not need, so the first build stays within a few minutes on 2 cores.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    # -O1, not Release's -O3: a quarter less compile time, and a model 64 wide needs no faster kernels
    "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to cache
    "-DGGML_NATIVE=OFF",  # the cached binary must not depend on the CPU it was built on (x86-64: AVX2)
    "-DGGML_OPENMP=OFF",  # ggml's own thread pool; no libgomp at run time
    "-DGGML_LLAMAFILE=OFF",  # sgemm.cpp is slow to compile and gains nothing on a tiny model
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_ALL_WARNINGS=OFF",
    # vendor/llama.cpp/.git points into the sdist's top-level .git, which is not unpacked; without this the
    # server's --version and /props say "commit unknown"
    f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}",
    "-DLLAMA_CURL=OFF",  # deprecated and ignored at 0c1e570, kept so that an older pin builds the same
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS model downloads, no libssl-dev needed
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # llama-server lives under tools/
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",  # no npm
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the build downloads the web UI from Hugging Face
)

# Tools the build runs, with the Debian package that provides each (.ci/run installs them).
BUILD_TOOLS = {"cmake": "cmake", "make": "make", "cc": "gcc", "c++": "g++"}


def _log(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where built servers are kept: ``$GW_TEST_CACHE``, else ``$XDG_CACHE_HOME/gpuwatch-tests``."""
    explicit = os.environ.get("GW_TEST_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gpuwatch-tests"


def _build_dir_name() -> str:
    # The options are part of the name: changing them builds afresh instead of reusing a stale binary.
    digest = hashlib.sha256("\n".join(CMAKE_OPTIONS).encode()).hexdigest()[:8]
    return f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{digest}"


def cached_llama_server() -> Path | None:
    """The cached binary, if there is one that runs on this machine."""
    binary = cache_dir() / _build_dir_name() / "bin" / "llama-server"
    if not binary.is_file():
        return None
    # A cache carried to another machine (or architecture) may not run here; then build again.
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        _log(f"cached {binary} does not run here (exit {probe.returncode}); building again")
        return None
    return binary


def missing_build_tools() -> str | None:
    """Which build tools are not on PATH and how to install them, or None when all are there."""
    missing = {tool: package for tool, package in BUILD_TOOLS.items() if shutil.which(tool) is None}
    if not missing:
        return None
    return f"{', '.join(missing)} not installed (apt-get install {' '.join(sorted(set(missing.values())))})"


def llama_server_binary() -> Path:
    """Path of a ``llama-server`` binary: the cached one, or one built now (minutes) and cached."""
    binary = cached_llama_server()
    if binary is not None:
        return binary
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache; a second test process waits here and then finds the binary.
    with (root / f"{_build_dir_name()}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = cached_llama_server()
        if binary is None:
            binary = _build_into_cache(root)
    return binary


def _build_into_cache(root: Path) -> Path:
    missing = missing_build_tools()
    if missing:
        raise RuntimeError(f"cannot build llama-server: {missing}")
    final = root / _build_dir_name()
    for stale in root.glob(f".{_build_dir_name()}.*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
    # Built under the cache root so that the finished tree is renamed into place: a killed build leaves a
    # hidden temporary directory behind, never a half-filled cache entry.
    work = Path(tempfile.mkdtemp(prefix=f".{_build_dir_name()}.", dir=root))
    try:
        started = time.monotonic()
        source = _vendored_llama_cpp(work)
        build = work / "build"
        jobs = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)
        _log(f"configuring {source} ({' '.join(CMAKE_OPTIONS)})")
        _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], work / "cmake-configure.log")
        _log(f"compiling llama-server with {jobs} jobs; this takes several minutes the first time")
        compile_command = ["cmake", "--build", str(build), "--target", "llama-server", "--parallel", jobs]
        _run(compile_command, work / "cmake-build.log", echo=True)
        stage = work / "stage"
        (stage / "bin").mkdir(parents=True)
        shutil.copy2(build / "bin" / "llama-server", stage / "bin" / "llama-server")
        if final.exists():
            final.rename(work / "replaced")  # a cached binary that does not run here
        stage.rename(final)
        _log(f"built {final / 'bin' / 'llama-server'} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "bin" / "llama-server"


def _vendored_llama_cpp(work: Path) -> Path:
    """Download the pinned sdist with pip, check its hash, unpack ``vendor/llama.cpp`` into ``work``."""
    _log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist")
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    download = work / "sdist"
    # Not --no-binary :all:, which also builds the sdist's build backend and all its dependencies from source
    # (scikit-build-core, hatchling, setuptools...) before pip can read the sdist's metadata: minutes more.
    pip_download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python"]
    _run([*pip_download, "--dest", str(download), requirement], work / "pip-download.log")
    (sdist,) = download.glob("llama_cpp_python-*.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{sdist.name}: SHA-256 {digest}, expected {SDIST_SHA256}")
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(work / "src", members=members, filter="data")
    return work / "src" / prefix


def _run(command: list[str], log_path: Path, echo: bool = False) -> None:
    """Run ``command`` with its output in ``log_path`` (and on stderr if ``echo``); raise with the tail if it fails."""
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stderr.write(line)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command)} failed with exit {proc.returncode}:\n{tail}")


# The tiny model: a Llama with 2 layers and a sentencepiece ("llama") vocabulary small enough to read whole.
_WORDS = (
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "gpu", "token",
    "power", "memory", "server", "model", "hello", "world", "once", "upon", "a", "time", "there", "lived",
)  # fmt: skip
_EMBEDDING = 64
_HEADS = 4
_HEADS_KV = 2
_FEED_FORWARD = 128
_LAYERS = 2


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of a sentencepiece vocabulary llama.cpp accepts.

    Every byte has a ``<0xNN>`` token (llama.cpp falls back to them for text outside the vocabulary), every
    printable ASCII character is a piece, and each word is reachable by merges because all its prefixes are pieces.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581", *(chr(code) for code in range(0x21, 0x7F))]
    for word in _WORDS:
        pieces += [f"\u2581{word[:end]}" for end in range(1, len(word) + 1)]
    pieces = list(dict.fromkeys(pieces))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # sentencepiece merges the pair whose result scores highest first: longer pieces win
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(piece)) for piece in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Write a random-weight Llama GGUF (F32, about 0.5 MB) that llama.cpp loads in milliseconds."""
    tokens, scores, types = _vocabulary()
    rng = np.random.default_rng(seed)
    head_dim = _EMBEDDING // _HEADS

    def weights(*shape: int) -> np.ndarray:
        # numpy shape is ggml's reversed: (n_vocab, n_embd) is llama.cpp's token_embd {n_embd, n_vocab}
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("gpuwatch tiny random llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(2048)
    writer.add_embedding_length(_EMBEDDING)
    writer.add_block_count(_LAYERS)
    writer.add_feed_forward_length(_FEED_FORWARD)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    ones = np.ones(_EMBEDDING, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights(len(tokens), _EMBEDDING))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weights(len(tokens), _EMBEDDING))
    for layer in range(_LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones)
        writer.add_tensor(f"{block}.attn_q.weight", weights(_EMBEDDING, _EMBEDDING))
        writer.add_tensor(f"{block}.attn_k.weight", weights(_HEADS_KV * head_dim, _EMBEDDING))
        writer.add_tensor(f"{block}.attn_v.weight", weights(_HEADS_KV * head_dim, _EMBEDDING))
        writer.add_tensor(f"{block}.attn_output.weight", weights(_EMBEDDING, _EMBEDDING))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones)
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(_FEED_FORWARD, _EMBEDDING))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(_FEED_FORWARD, _EMBEDDING))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(_EMBEDDING, _FEED_FORWARD))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextmanager
def running_llama_server(
    binary: Path, model: Path, log_dir: Path, slots: int = 2, metrics: bool = True
) -> Iterator[str]:
    """Run ``llama-server --metrics`` (without ``--metrics`` if not ``metrics``) on a free local port;
    yield its base URL once ``/health`` answers OK."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"llama-server-{port}.log"
    command = [
        str(binary),
        *("-m", str(model), *(["--metrics"] if metrics else []), "--host", "127.0.0.1", "--port", str(port)),
        *("-np", str(slots), "-c", "2048", "-t", "2", "--no-warmup"),
    ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log_path, timeout_s=60)
        yield url
    finally:
        terminate(proc, timeout_s=10)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    # /health answers 503 while the model loads, 200 once the server takes requests.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        exited = proc.poll()
        if exited is not None or time.monotonic() > deadline:
            why = f"exited with {exited}" if exited is not None else f"not healthy within {timeout_s:.0f} s"
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"llama-server {why}; last lines of {log_path}:\n{tail}")
        time.sleep(0.1)


if __name__ == "__main__":
    # .ci/run builds the server here first, so that the build's progress shows in the CI log as it happens.
    print(llama_server_binary())
