import os
import socket
import sys
import sysconfig
from pathlib import Path

import pytest

import serving.triton.server_environment as triton_env
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.server_environment import triton_environment
from shared.errors import ServingError


def test_environment_builds_backend_dir_with_stub_and_library_paths(tmp_path):
    env = triton_environment(cache_root=tmp_path)
    assert env.binary.name == "tritonserver" and os.access(env.binary, os.X_OK)
    stub = env.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.is_file() and (env.backend_dir / "python" / "libtriton_python.so").is_file()
    assert env.backend_dir.parent == tmp_path
    assert env.env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert "nvidia_pytriton.libs" in env.env["LD_LIBRARY_PATH"].split(":")[1]
    assert env.env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert triton_environment(cache_root=tmp_path).backend_dir == env.backend_dir  # built once


def test_missing_binary_raises_clear_error(tmp_path):
    with pytest.raises(ServingError, match=r"tritonserver binary not found.*pip install -e '\.\[serve\]'"):
        triton_environment(root=tmp_path / "pytriton", cache_root=tmp_path)


def test_missing_stub_for_this_python_raises_clear_error(tmp_path):
    binary = tmp_path / "pytriton/tritonserver/bin/tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    with pytest.raises(ServingError, match=r"no python backend stub for Python 3\.\d+"):
        triton_environment(root=tmp_path / "pytriton", cache_root=tmp_path)


def test_server_start_without_pytriton_names_the_install_command(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    monkeypatch.setattr(triton_env, "pytriton_root", lambda: tmp_path / "missing")
    server = EmbeddedTriton(
        tmp_path / "repo", grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    with pytest.raises(ServingError, match="install nvidia-pytriton==0.7.0"):
        server.start()


def test_port_taken_error_names_the_port_and_the_flag(tmp_path):
    (tmp_path / "repo").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedTriton(
            tmp_path / "repo", grpc_port=free_port(), http_port=free_port(), metrics_port=port
        )
        with pytest.raises(
            ServingError, match=rf"metrics port {port} on 127\.0\.0\.1 is already in use.*--metrics-port"
        ):
            server.start()


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServingError, match="does not exist; build it first"):
        EmbeddedTriton(tmp_path / "nope").start()
